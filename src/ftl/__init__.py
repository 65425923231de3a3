"""ftl: fine-tune small transformers on healthcare text with Lightning."""

__version__ = "0.1.0"
