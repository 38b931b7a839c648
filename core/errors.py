"""Errors about input records, located for the person who has to fix the file."""

class RecordError(ValueError):
    """A problem with one record, located for the person who has to fix the file."""

    def __init__(self, source: str, location: str, problem: str):
        super().__init__(f"{source}, {location}: {problem}")
        self.source = source
        self.location = location
        self.problem = problem


class MissingFieldError(KeyError):
    """A record lacks a field its format needs; the datamodule adds the file and line."""

    def __init__(self, field: str, detail: str = ""):
        super().__init__(field)
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        return f"missing or invalid field '{self.field}'" + (f": {self.detail}" if self.detail else "")
