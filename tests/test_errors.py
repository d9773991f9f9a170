"""The error tree and the one status table."""

from __future__ import annotations

import email.utils
import logging
import time

import pytest

from smoothapi import errors
from smoothapi.errors import error_for_status, parse_retry_after


@pytest.mark.parametrize(
    "status, cls, retryable",
    [
        (400, errors.BadRequestError, False),
        (401, errors.AuthenticationError, False),
        (403, errors.PermissionDeniedError, False),
        (404, errors.BadRequestError, False),
        (413, errors.InvalidImageError, False),
        (415, errors.InvalidImageError, False),
        (418, errors.BadRequestError, False),
        (429, errors.RateLimitError, True),
        (500, errors.ServerError, True),
        (503, errors.ServerError, True),
        (408, errors.APITimeoutError, True),
    ],
)
def test_status_table(status, cls, retryable):
    error = error_for_status(status, "boom", provider="p", code="E1", retry_after=2.0)
    assert type(error) is cls and error.retryable is retryable
    assert isinstance(error, errors.ProviderError) and isinstance(error, errors.SmoothAPIError)
    assert (error.status, error.code, str(error)) == (status, "E1", "p: boom")
    if cls is errors.RateLimitError:
        assert error.retry_after == 2.0


def test_retry_after_seconds_and_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= parse_retry_after(later) <= 31


def test_tree_shape():
    assert issubclass(errors.APITimeoutError, errors.APIConnectionError)
    assert issubclass(errors.InvalidImageError, errors.BadRequestError)
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.MissingDependencyError, ImportError)


def test_retry_after_lives_on_every_provider_error_and_secrets_are_redacted():
    from smoothapi._redaction import RedactingFilter, register_secret
    from smoothapi.errors import ServerError, error_for_status

    unavailable = error_for_status(503, "busy", provider="x", retry_after=2.5)
    assert type(unavailable) is ServerError and unavailable.retry_after == 2.5
    assert error_for_status(400, "bad").retry_after is None
    register_secret("s3cr3t-value-77")
    error = ServerError("the server said s3cr3t-value-77 and s3cr3t-value-77", provider="x")
    assert "s3cr3t" not in str(error) + repr(error) and str(error).count("<redacted>") == 2
    record = logging.LogRecord("any", logging.INFO, __file__, 1, "key=%s", ("s3cr3t-value-77",),
                               None)
    assert RedactingFilter().filter(record) and record.getMessage() == "key=<redacted>"
    assert not ServerError("x").possibly_billed


def test_redirect_and_too_large_errors_in_the_tree():
    assert issubclass(errors.RedirectError, errors.ProviderError)
    assert not errors.RedirectError("x").retryable  # it would redirect again
    assert issubclass(errors.ResponseTooLargeError, errors.ServerError)
    assert errors.ResponseTooLargeError("x").retryable
    assert not errors.ResponseTooLargeError("x").possibly_billed
    for name in ("RedirectError", "ResponseTooLargeError"):
        assert name in errors.__all__ and name in errors.__doc__


def test_an_error_pickles_with_its_redacted_cause_and_no_sdk_object():
    import pickle

    from smoothapi._redaction import describe_cause, register_secret

    register_secret("cause-secret-0099")
    error = errors.AuthenticationError("denied", provider="p", status=401)

    class SDKError(Exception):
        def __init__(self, message):
            super().__init__(message)
            self.response = {"Error": {"Message": message}}  # where SDKs keep the echo

    error.cause_type, error.cause_message = describe_cause(SDKError("bad key cause-secret-0099"))
    assert error.cause_type.endswith("SDKError")
    assert error.cause_message == "bad key <redacted>"
    data = pickle.dumps(error)
    assert b"cause-secret-0099" not in data
    restored = pickle.loads(data)
    assert (type(restored), restored.status, restored.cause_message) == (
        errors.AuthenticationError, 401, "bad key <redacted>")
    assert errors.ProviderError("x").cause_type is None
