"""hero-proc: the command-line client of hero-procd (click; import-light on purpose)."""
