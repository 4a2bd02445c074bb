"""Post-training methods, one module each; every module here is discovered and registers its
method (see :func:`flowpost.methods.base.method_registry`). Nothing is listed in this file."""
