"""SAS 6.02 host driver: sans-I/O protocol core plus one trio shell (driver.py)."""
