"""Every error leaves in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MAX_MESSAGES = 5  # validation problems named in one error message

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """Raise anywhere in a route to answer with this status and message."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """Pydantic's list of problems -> one readable message and the first offending field."""
    by_field: dict[str | None, list[str]] = {}
    checked: set[str | None] = set()  # fields one of our own checks (a value error) refused
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "header")]
        # drop pydantic's union-member tags (e.g. "list[int]", "function-after[...]") from the path
        loc = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "list")]
        field = ".".join(loc) or None
        msg = err.get("msg", "invalid value").removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            msg = f"the request body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
        elif err.get("type") == "model_attributes_type" and not loc:
            msg = "the request body must be a JSON object"
        elif err.get("type") == "int_parsing_size":  # beyond 64 bits: JSON parsing made it a float
            msg = "must be an integer of at most 64 bits"
        if err.get("type") == "value_error" and field not in checked:
            # a value that failed every member of a union: our check's message says more than
            # "Input should be a valid list" from the members it was never meant for
            checked.add(field)
            by_field[field] = []
        if field in checked and err.get("type") != "value_error":
            continue
        by_field.setdefault(field, []).append(msg)
    messages = list(dict.fromkeys(f"{field}: {msg}" if field else msg for field, msgs in by_field.items()
                                  for msg in msgs))
    if not messages:
        return "invalid request", None
    if len(messages) > MAX_MESSAGES:  # the first few say what to fix; a body of a million errors stays small
        messages = [*messages[:MAX_MESSAGES], f"and {len(messages) - MAX_MESSAGES} more problems"]
    first = next(iter(by_field))  # the field, without list indices (the message keeps them)
    param = ".".join(p for p in first.split(".") if not p.isdigit()) if first else None
    return "; ".join(messages), param or None


def install_error_handlers(app: FastAPI) -> None:
    document_errors(app)

    def note(request: Request, code: str | None) -> None:  # for the request log and the rejection metrics
        record = getattr(request.state, "record", None)
        if record is not None:
            record.error_code = code

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        note(request, exc.code)
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        note(request, "invalid_value")
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error; the request id in X-Request-ID helps find it in the logs")


class ErrorDetail(BaseModel):
    message: str = Field(..., description="What is wrong, naming the offending field.",
                         examples=["temperature: Input should be less than or equal to 2"])
    type: str = Field(..., description="invalid_request_error, authentication_error, not_found_error, "
                      "rate_limit_error, service_unavailable or internal_error.", examples=["invalid_request_error"])
    param: str | None = Field(None, description="The request field at fault, when there is one.",
                              examples=["temperature"])
    code: str | None = Field(None, description="A stable machine-readable reason, e.g. queue_full; null when there "
                             "is none.", examples=["invalid_value"])


class ErrorResponse(BaseModel):
    error: ErrorDetail = Field(..., description="The error, in OpenAI's shape.", examples=[{
        "message": "temperature: Input should be less than or equal to 2", "type": "invalid_request_error",
        "param": "temperature", "code": "invalid_value"}])


def document_errors(app: FastAPI) -> None:
    """OpenAPI as the service behaves: OpenAI-shaped errors, 400 (never 422) for invalid input."""

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["ErrorResponse"] = error_schema
        content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if responses.pop("422", None) is not None:
                    responses.setdefault("400", {"description": "invalid request"})
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = content
        app.openapi_schema = schema
        return schema

    app.openapi = openapi
