"""Stage functions. Every module in this package is imported by the worker, so a
function decorated with ``@stage_function(..., stage=...)`` here handles its stage
without further configuration."""
