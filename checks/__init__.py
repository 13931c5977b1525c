"""Built-in check families, installed as resumedoctor.checks; one module per family."""
