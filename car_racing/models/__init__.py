"""Neural network modules and their losses only: no env, no file I/O, no globals."""
