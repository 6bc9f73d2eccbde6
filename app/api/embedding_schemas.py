"""HTTP bodies of POST /v1/embeddings: OpenAI's, plus the pooling, the layer and standardisation
(see docs/embeddings.md). `to_embed_params()` converts to the engine's parameters once."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.schemas import Prompt, Text
from app.engine.protocol import EmbedParams


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "gpt2", "input": ["The cat sat on the mat.", "A dog slept on the rug."]},
        {"input": "In the beginning", "pooling": "last", "layer": 6, "encoding_format": "base64"}]})

    model: str | None = Field(None, description="The served model's name (see GET /v1/models); omit for the default.",
                              examples=["gpt2"])
    input: Prompt = Field(..., description="A string, a list of strings, a list of token ids, or a list of token-id "
                          "lists: one embedding each. Each must fit the model's context.",
                          examples=[["The cat sat on the mat.", "A dog slept on the rug."]])
    encoding_format: Literal["float", "base64"] = Field("float", description="`float`: a list of numbers; `base64`: "
                                                        "the little-endian float32 bytes, base64-encoded (what the "
                                                        "official openai client asks for).", examples=["float"])
    dimensions: int | None = Field(None, ge=1, description="Only the model's hidden size (or null) is accepted: a "
                                   "GPT-2 embedding cannot be shortened.", examples=[768])
    user: Text | None = Field(None, description="An end-user id, for your own logs; not used.", examples=["user-1"])
    timeout: float | None = Field(None, gt=0, description="Seconds this request may take (at most the server's "
                                  "GPT2_REQUEST_TIMEOUT); then it is stopped with a 504 `timeout`.", examples=[30])
    # extensions
    pooling: Literal["mean", "last"] = Field("mean", description="`mean`: the average over every token's hidden "
                                             "state; `last`: the last token's (it has seen the whole text).",
                                             examples=["mean"])
    layer: int | None = Field(None, description="Whose hidden states to pool, numbered as transformers' "
                              "output_hidden_states: 0 the token and position embeddings, l the residual stream "
                              "after block l, the number of layers the final hidden state (after the final layer "
                              "norm). Negative counts from the end (-1: the final). null: the final.",
                              examples=[-1])
    standardize: bool | None = Field(None, description="Subtract the reference corpus's mean and divide by its "
                                     "standard deviation, per dimension, before normalising (the server's "
                                     "GPT2_EMBEDDING_REFERENCE). null: when the server has the statistics; true "
                                     "without them is a 400.", examples=[True])
    normalize: bool = Field(True, description="Scale each embedding to unit L2 norm (so a dot product is the "
                            "cosine similarity).", examples=[True])

    def inputs(self) -> list[str | list[int]]:
        """The inputs, one entry each (a text or token ids)."""
        value = self.input
        if isinstance(value, str) or (value and isinstance(value[0], int)):
            return [value]
        return list(value)

    def to_embed_params(self, layer: int, standardize: bool) -> EmbedParams:
        """The engine's parameters, once the layer is resolved (0..L) and standardize decided."""
        return EmbedParams(layers=[layer], pooling=[self.pooling], standardize=standardize, normalize=self.normalize)


class Embedding(BaseModel):
    object: Literal["embedding"] = Field("embedding", description="Always `embedding`.", examples=["embedding"])
    index: int = Field(..., description="Position of the input in the request.", examples=[0])
    embedding: list[float] | str = Field(..., description="The vector (hidden size numbers), or with "
                                         "encoding_format base64 its float32 bytes in base64.",
                                         examples=[[0.0213, -0.0107, 0.0364]])


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = Field(..., description="Tokens of all inputs.", examples=[12])
    total_tokens: int = Field(..., description="prompt_tokens (nothing is generated).", examples=[12])


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = Field("list", description="Always `list`.", examples=["list"])
    data: list[Embedding] = Field(..., description="One embedding per input, in request order.", examples=[[
        {"object": "embedding", "index": 0, "embedding": [0.0213, -0.0107, 0.0364]}]])
    model: str = Field(..., description="The served model's name.", examples=["gpt2"])
    usage: EmbeddingUsage = Field(..., description="Token counts of the whole request.",
                                  examples=[{"prompt_tokens": 12, "total_tokens": 12}])
