"""Bulk Data Access 2.0 ``$export``: jobs in the database, run by any app process, files that keep protected
values sealed on disk."""
