"""The decoder rerankers' prompts as their model cards and libraries write them, copied from there.

Written here once, from the sources named below, and never imported from the code under test: the fast suite
pins gateway.families' templates to this text (tests/unit/gateway/test_tokenization_templates.py) and the
reference scorers (tests/family_models.py) and token-id references build their prompts from it.
"""

from __future__ import annotations

# Qwen/Qwen3-Reranker-0.6B (also -4B, -8B) model card, "Transformers usage":
#   prefix = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the
#             Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
#   suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
#   def format_instruction(instruction, query, doc):
#       if instruction is None:
#           instruction = 'Given a web search query, retrieve relevant passages that answer the query'
#       output = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}".format(...)
#   token_false_id = tokenizer.convert_tokens_to_ids("no"); token_true_id = ...("yes")
QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_TRUE, QWEN3_FALSE = "yes", "no"


def qwen3_format_instruction(instruction: str | None, query: str, doc: str) -> str:
    """The card's format_instruction."""
    if instruction is None:
        instruction = QWEN3_DEFAULT_INSTRUCTION
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"


# mixedbread-ai/mxbai-rerank, package mxbai_rerank 0.1.6 (commit 8e709dc), class MxbaiRerankV2:
#   sep = "\n"; instruction_prompt = "instruction: {instruction}"; query_prompt = "query: {query}";
#   doc_prompt = "document: {document}"; task_prompt (below); chat_template = {"prefix": ..., "suffix": ...};
#   pos/neg tokens "1" / "0"; prepare_inputs: query_text = query_prompt (instruction_prompt + sep before it when
#   an instruction is given), then prefix + query + sep + document + sep + task_prompt + suffix, each tokenized
#   without special tokens; the query cut to max_length * 3 // 4 tokens, query + sep + document to max_length.
MXBAI_SEP = "\n"
MXBAI_INSTRUCTION_PROMPT = "instruction: {instruction}"
MXBAI_QUERY_PROMPT = "query: {query}"
MXBAI_DOC_PROMPT = "document: {document}"
MXBAI_TASK_PROMPT = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n"
)
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_POS, MXBAI_NEG = "1", "0"


def mxbai_query_text(query: str, instruction: str | None) -> str:
    """MxbaiRerankV2's query text: the instruction line only with an instruction."""
    text = MXBAI_QUERY_PROMPT.format(query=query)
    if instruction:
        text = MXBAI_INSTRUCTION_PROMPT.format(instruction=instruction) + MXBAI_SEP + text
    return text
