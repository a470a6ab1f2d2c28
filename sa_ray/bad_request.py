"""The error a request to the endpoint answers with when it breaks a rule: a 4xx JSON body `{"error", "field"}`.

Light on purpose (no model, no Ray): the speech requests (`sa_ray.serve`) and the votes (`sa_ray.votes`) share it.
"""

from __future__ import annotations


class BadRequest(ValueError):
    """A request that breaks a rule; `status` is the HTTP code to answer with (4xx)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status

    def body(self) -> dict:
        """The JSON answer; a field named by the client (an unknown one) is cut short and escaped, so that a lone
        surrogate or a megabyte-long key is not echoed back (nor breaks the JSON encoder: a 500)."""
        return {"error": printable(self.message, 2000), "field": printable(self.field, 60)}


def printable(text: str, limit: int) -> str:
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")
