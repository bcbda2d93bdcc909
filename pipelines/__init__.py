"""How data flows: Ray Data and Ray Train programs, formats, metrics and reports."""
