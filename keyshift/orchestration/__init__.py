"""What runs and scales several workers from outside: the local supervisor
(``keyshift run``) and the scaling backends (``keyshift scale``)."""
