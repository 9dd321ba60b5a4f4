import pytest

from ollama_wire.names import InvalidModelName, canonical, display, parse, strip_gateway_prefix

LLAMA3 = "registry.ollama.ai/library/llama3:latest"


@pytest.mark.parametrize(
    ("name", "key", "shortest"),
    [
        pytest.param("llama3", LLAMA3, "llama3:latest", id="bare name gets defaults"),
        pytest.param("llama3:latest", LLAMA3, "llama3:latest", id="explicit default tag"),
        pytest.param("library/llama3", LLAMA3, "llama3:latest", id="default namespace"),
        pytest.param(LLAMA3, LLAMA3, "llama3:latest", id="fully qualified"),
        pytest.param("Llama3:LATEST", LLAMA3, "Llama3:LATEST", id="case-insensitive key"),
        pytest.param(
            "jmorgan/llama3",
            "registry.ollama.ai/jmorgan/llama3:latest",
            "jmorgan/llama3:latest",
            id="other namespace is another model",
        ),
        pytest.param(
            "hf.co/bartowski/X:Q4_K_M",
            "hf.co/bartowski/x:q4_k_m",
            "hf.co/bartowski/X:Q4_K_M",
            id="other host kept",
        ),
        pytest.param(
            "myreg:5000/ns/m:t", "myreg:5000/ns/m:t", "myreg:5000/ns/m:t", id="host with port"
        ),
        pytest.param(
            "qwen2.5:0.5b",
            "registry.ollama.ai/library/qwen2.5:0.5b",
            "qwen2.5:0.5b",
            id="dots in model and tag",
        ),
    ],
)
def test_normalisation(name: str, key: str, shortest: str) -> None:
    assert canonical(name) == key
    assert display(name) == shortest


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param(" llama3", id="leading space"),
        pytest.param("a/b/c/d", id="too many parts"),
        pytest.param("/x", id="empty namespace"),
        pytest.param("x:", id="empty tag"),
        pytest.param("../etc/passwd", id="path traversal"),
        pytest.param("a b", id="space"),
        pytest.param("ns.with.dots/m", id="dots in namespace"),
        pytest.param("http://h/n/m", id="scheme"),
        pytest.param("-leading-dash", id="leading dash"),
        pytest.param("m" * 81, id="model too long"),
    ],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(InvalidModelName):
        parse(name)


@pytest.mark.parametrize(
    ("name", "stripped"),
    [
        ("ollama/llama3", "llama3"),
        ("ollama:llama3:8b", "llama3:8b"),
        ("OLLAMA/llama3", "llama3"),
        ("llama3", None),
        ("ollama/", None),
    ],
)
def test_gateway_prefix(name: str, stripped: str | None) -> None:
    assert strip_gateway_prefix(name) == stripped
