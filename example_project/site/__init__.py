"""A minimal Django project for the demo and for trying the record store's command."""
