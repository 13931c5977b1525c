"""Built-in fixers, installed as resumedoctor.fixers; one module per check family."""
