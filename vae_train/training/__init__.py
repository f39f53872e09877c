"""Training: the loop (``trainer``) and the modules around it, each with one job."""
