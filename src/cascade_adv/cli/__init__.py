"""The ``cascade-adv`` command line: a thin layer over the library."""
