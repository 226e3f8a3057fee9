from shardcache.testing.cli import main

raise SystemExit(main())
