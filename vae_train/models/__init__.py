"""Model families: one file each; ``base.py`` holds the interface every model meets."""
