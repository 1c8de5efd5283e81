"""The error taxonomy. Every message is one sentence that names the input and the fix."""


class PageLensError(Exception):
    """Root of every error pagelens raises on purpose."""


class BadInputError(PageLensError, ValueError):
    """Something the user gave (a file, a box, a glob, a setting) cannot be used as given."""


class NotFoundError(BadInputError, LookupError):
    """A page, document or file the user named does not exist in the store."""


class StoreError(PageLensError):
    """The page store cannot be opened or used: held by another process, or built with other settings."""


class DependencyError(PageLensError):
    """An optional program or package that this request needs is not installed."""


class PolicyError(PageLensError):
    """The policy endpoint cannot be used: unreachable, refusing the request, or failing after every retry."""
