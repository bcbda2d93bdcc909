"""Dataset readers/writers into one internal model (see `pipelines.formats.model`)."""
