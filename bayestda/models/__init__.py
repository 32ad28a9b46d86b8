"""The model families, one module each; every module here registers its family (`bayestda.families`)."""
