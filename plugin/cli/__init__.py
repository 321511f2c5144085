"""Everything that runs only in a terminal: the ``mkopper-cds`` command (``main``) and its
sub-commands. Nothing outside this package imports it."""
