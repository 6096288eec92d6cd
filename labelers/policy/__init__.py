"""Policy backends: one batched interface over llama.cpp, vLLM and OpenAI-compatible servers."""

from labelers.policy.base import (
    ChatMessage,
    Completion,
    GenerationRequest,
    GenerationResult,
    Policy,
    TokenUsage,
)

__all__ = ["ChatMessage", "Completion", "GenerationRequest", "GenerationResult", "Policy", "TokenUsage"]
