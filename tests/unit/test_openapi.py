"""/openapi.json documents what the service does: every field of every schema, errors as they are."""

from app.config import Settings
from app.main import create_app


def test_every_field_of_every_schema_has_a_description_and_an_example():
    schema = create_app(Settings(load_format="dummy")).openapi()
    components = schema["components"]["schemas"]
    assert {"CompletionRequest", "CompletionResponse", "ModelList", "ErrorResponse"} <= set(components)
    missing = []
    for name, component in components.items():
        for field, prop in component.get("properties", {}).items():
            if not prop.get("description"):
                missing.append(f"{name}.{field}: description")
            if "examples" not in prop and "example" not in prop:
                missing.append(f"{name}.{field}: example")
    assert missing == []


def test_errors_are_documented_as_400_with_openai_shape_never_422():
    schema = create_app(Settings(load_format="dummy")).openapi()
    completions = schema["paths"]["/v1/completions"]["post"]["responses"]
    assert "422" not in str(schema["paths"]) and {"400", "404", "429", "503"} <= set(completions)
    assert completions["429"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorResponse")
    assert set(schema["components"]["schemas"]["ErrorDetail"]["properties"]) == {"message", "type", "param", "code"}
