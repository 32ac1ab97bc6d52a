"""A simulated SAS machine (sans-I/O, the mirror of drivers.sas.host) plus its play model, ledger,
trio runner and a pseudo-terminal fleet harness."""
