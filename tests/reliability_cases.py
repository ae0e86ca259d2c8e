"""Every case the reliability suite tries, declared once, and the table of them in docs/reliability.md.

Each case has an id, a theme, what was tried and what happens. Tests say which cases they cover
with ``@covers("id", ...)``; ``test_reliability_table.py`` fails when a case has no test, a test
names an unknown case, or the committed table differs from ``render_table()``. After editing a
case, write the table again: ``.venv/bin/python tests/reliability_cases.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

TABLE_PATH = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
THEMES = {
    "images": "Bad and unusual images",
    "requests": "Bad questions and options",
    "checkpoints": "Bad checkpoints",
    "generation": "Faults in generation",
    "sessions": "Long sessions",
    "remote": "Remote servers and batches",
    "new-parts": "Devices, conversations, any checkpoint, overlays",
}


@dataclass(frozen=True)
class Case:
    id: str
    theme: str
    tried: str
    happens: str


CASES: tuple[Case, ...] = (
    # Images ---------------------------------------------------------------------------------
    Case("not-an-image", "images", "bytes or a file that are not an image (text)",
         "ImageError: not an image format Pillow can read"),
    Case("zero-bytes", "images", "zero bytes, as bytes or as an empty file",
         "ImageError: the image is empty (0 bytes)"),
    Case("truncated-jpeg", "images", "a JPEG cut off after 200 bytes",
         "ImageError: corrupt or truncated"),
    Case("png-bomb", "images", "PNGs of a few kB declaring 10000 x 10000 and 20000 x 20000 pixels",
         "ImageError from the header alone, before any pixel is decoded: the size and the limit (64 MP, "
         "`max_pixels=`), or past Pillow's own limit (179 MP) Pillow's figures"),
    Case("tiny-1x1", "images", "a 1 x 1 picture",
         "answered (both families); the pixel reaches the model unchanged"),
    Case("thin-10000x10", "images", "10000 x 10 and 10 x 10000 pictures",
         "SmolVLM answers; Qwen2-VL refuses with ImageError (its processor takes at most 200:1; "
         "crop or pad), at exactly 200:1 it answers"),
    Case("grayscale", "images", "a grayscale (L) picture",
         "converted to RGB with equal channels, answered"),
    Case("palette", "images", "a palette (P) PNG of a scene",
         "the same caption as the RGB picture"),
    Case("rgba", "images", "an RGBA picture whose background is transparent",
         "composited on white: the caption says 'white background'"),
    Case("cmyk", "images", "a CMYK JPEG of a scene",
         "converted to RGB: the same caption as the RGB picture"),
    Case("16-bit", "images", "a 16-bit grayscale PNG (I;16)",
         "scaled to 8 bits (65535 -> 255, 32768 -> 128), answered"),
    Case("animated-gif", "images", "an animated GIF (red circle, then blue square)",
         "the first frame is used: 'A red circle on a white background.'"),
    Case("exif-rotated", "images", "JPEGs stored sideways or upside down with EXIF orientation 3, 6 and 8",
         "turned as a viewer shows them: the triangle is captioned as a triangle (unturned, it is not)"),
    Case("numpy-shape", "images", "numpy arrays of shape (H, W, 2), (H, W, 5), (N,), (1, H, W, 3), (3, H, W)",
         "ImageError naming the accepted shapes; channels-first arrays get the transpose that fixes them"),
    Case("numpy-dtype", "images", "numpy arrays of dtype int64, uint16, bool, float outside 0..1, NaN",
         "ImageError naming the accepted dtypes and ranges"),
    Case("closed-pil-image", "images", "a PIL image used after its `with Image.open(...)` block (a PNG, an "
         "animated GIF) or after `.close()`, given to a model, to `VLMWidget(model, image=...)` and to `widget.image`",
         "ImageError: the image was closed; reopen it, `.load()` or `.copy()` it inside the block, or pass the "
         "path (before: a bare AssertionError, or ValueError 'Operation on closed image')"),
    Case("empty-array", "images", "numpy arrays with no pixels: float (0, 4, 3) and (4, 0), uint8 (0, 4, 3)",
         "ImageError: the image has no pixels (before, for floats: numpy's 'zero-size array' ValueError)"),
    Case("float-pil-image", "images", "a PIL image of mode F holding 0..1, and one holding 0..255",
         "read as 0..1, as a float numpy array is: the caption of the 8-bit picture; 0..255 is refused with "
         "ImageError (divide by 255) (before: 0..1 was read as 0..255, a black picture)"),
    Case("path-strings", "images", "a path with a 300-character file name; `~/name.png`; `http://` and "
         "`https://` addresses; through the API and `%vlm_caption`",
         "ImageError saying the name is longer than the file system allows (before: OSError); `~` is expanded "
         "(the picture in the home folder is captioned); URLs are refused: download the picture first"),
    # Requests -------------------------------------------------------------------------------
    Case("empty-question", "requests", "an empty or white-space-only question, or one of only control characters",
         "RequestError: the question is empty"),
    Case("not-text-question", "requests", "a question that is not a string (None, a number)",
         "RequestError: the question must be text"),
    Case("long-question", "requests", "a question of about 2800 tokens, over the context (256 and 512 tokens)",
         "RequestError before any token (streamed: when iterated): the token count, the context, "
         "'refused, not truncated', how much to cut"),
    Case("answer-fills-context", "requests", "max_new_tokens larger than the context leaves after the prompt",
         "max_new_tokens is cut to the room left: never a token past the context; a short answer is unchanged"),
    Case("control-characters", "requests", "a question with NUL, bell, escape, DEL and carriage returns",
         "the control characters are removed (tab and newline stay): the answer of the clean question"),
    Case("object-control-characters", "requests", "Moondream `detect` and `point` with an object name holding "
         "NUL, bell, escape and carriage returns; a name of nothing but them",
         "cleaned as a question is: the boxes and points of the clean name (before: another point, silently); "
         "RequestError 'Name the object to ...' for the empty name"),
    Case("special-tokens", "requests", "a question spelling the model's markup (`<image>`, `<|im_end|>`, ...)",
         "RequestError naming the tokens, before generating (the processor would see a second picture slot)"),
    Case("max-new-tokens", "requests", "max_new_tokens of 0, -1, 2.5, True, '8'",
         "RequestError: a whole number, at least 1"),
    Case("sampling-options", "requests", "temperature -1, NaN, inf or 'hot'; top_p 0 or 1.5; seed 'x'",
         "RequestError naming the option and its range"),
    Case("unknown-option", "requests", "a caption option of another family (`length` on SmolVLM, `prompt` "
         "on Qwen2-VL), through caption_with and the widget",
         "RequestError naming the family and its options"),
    Case("unknown-language", "requests", "Qwen2-VL captions in 'xx', '', None",
         "RequestError listing the known languages"),
    Case("huge-seed", "requests", "seed uuid.uuid4().int (about 2**122), 2**64, 7 * 2**64 + 3, -1, with temperature 4",
         "accepted: local models seed with it modulo 2**64 (as torch does with -1), so 7 * 2**64 + 3 samples "
         "exactly as seed 3 (before: torch's 'Overflow when unpacking long long')"),
    Case("tiny-temperature", "requests", "temperature 1e-38, 1e-300 and 5e-324 (the smallest float)",
         "decoded greedily, since under 1e-5 the sample is the most likely token: the greedy answer, in every "
         "family (before: torch's 'probability tensor contains inf, nan')"),
    Case("widget-bad-choice", "requests", "`run(language='xx')` on a Qwen2-VL widget, `run(length='huge')` on a "
         "Moondream widget, `run(prompt=5)`, `run(question=5)`",
         "RequestError with the API's own message listing the choices, before any control changes; the next "
         "run is exact (before: traitlets' TraitError)"),
    Case("max-new-tokens-zero", "requests", "max_new_tokens 0 through `%vlm_caption --max-new-tokens 0`, "
         "`widget.run(max_new_tokens=0)` and 0 typed into the widget's box",
         "refused with the API's message, 'max_new_tokens must be at least 1, got 0', nothing generated "
         "(before: the magic ran with 256, the widget with 1)"),
    Case("bad-model-name", "requests", "`get_model` given None, 123, '', '   ' or a 300-character name; "
         "`SmolVLM(123)`; `%vlm_caption --model` with a 300-character name",
         "UnknownModelError: a model name is text, the name is empty, or unknown, with the known names "
         "(before: AttributeError, OSError, or '' read as the current directory)"),
    # Checkpoints ----------------------------------------------------------------------------
    Case("missing-weights", "checkpoints", "a checkpoint directory without model.safetensors",
         "CheckpointError on load naming the weights and the directory"),
    Case("missing-processor-files", "checkpoints", "a checkpoint without tokenizer.json or the image "
         "processor's config",
         "CheckpointError on load naming the processor"),
    Case("missing-chat-template", "checkpoints", "a checkpoint without chat_template.jinja",
         "CheckpointError on load (before: it loaded, then every request failed)"),
    Case("missing-config", "checkpoints", "a directory without config.json, or an empty one",
         "CheckpointError when the model object is made: not a checkpoint directory"),
    Case("corrupt-safetensors", "checkpoints", "model.safetensors cut to 1000 bytes, or random bytes",
         "CheckpointError on load naming the weights"),
    Case("weights-of-another-model", "checkpoints", "a SmolVLM directory holding Qwen2-VL's weights",
         "CheckpointError: the weights lack the model's tensors (before: loaded with random weights)"),
    Case("config-of-another-family", "checkpoints", "SmolVLM given a Qwen2-VL checkpoint (and the reverse); a "
         "SmolVLM directory whose config.json is Qwen2-VL's; a config of an unsupported type; invalid JSON",
         "CheckpointError naming the family and the class to use, the supported types, or the JSON error"),
    Case("not-available-offline", "checkpoints", "Hub names not in the cache while offline "
         "(smolvlm-256m, qwen2-vl-2b, someone/nonexistent-vlm)",
         "CheckpointNotAvailableError with the `hf download ...` command that fetches it"),
    Case("nothing-half-loaded", "checkpoints", "loading again after each failure above",
         "the model object stays unloaded (no weights kept); once the directory is repaired the same "
         "object loads and answers exactly"),
    # Generation -----------------------------------------------------------------------------
    Case("exception-mid-stream", "generation", "a forward hook raising on the 1st (prefill) or 3rd "
         "(decoding) call, streamed and not",
         "the exception reaches the caller as itself; the text before it is kept; finish reason 'error'; "
         "the worker thread ends"),
    Case("cancel-before-first-token", "generation", "cancel while another generation holds the model",
         "no tokens, finish reason 'cancelled', the model never runs for it (before: it could start the "
         "prefill when the cancel came while it waited for the model)"),
    Case("cancel-during-prefill", "generation", "cancel while the first decoder layer of the prefill runs",
         "the prefill stops before the next layer: no tokens, finish reason 'cancelled'"),
    Case("cancel-mid-decode", "generation", "cancel before the 3rd token; Ctrl-C while iterating; leave a `with` "
         "block; drop the stream",
         "stops within a token: the text is the first tokens of the full answer, finish reason 'cancelled', "
         "the worker thread ends"),
    Case("start-cancel-cycles", "generation", "200 streams started and cancelled at once, after a chunk, "
         "or closed",
         "every stream ends cancelled or finished, no worker thread left, the next answer exact"),
    Case("eight-threads", "generation", "8 threads asking one model at once (captions, questions, streams)",
         "served one at a time (never two forward passes at once); every answer right"),
    Case("two-consumers", "generation", "one stream iterated by two threads at once; likewise when the model "
         "fails mid-answer",
         "each chunk goes to one thread, together they get the whole answer, and both end with it (or both "
         "get the model's exception) (before: the second thread waited for ever)"),
    # Sessions -------------------------------------------------------------------------------
    Case("200-generations", "sessions", "200 generations on one model, streamed and not",
         "after the first 10, resident memory grows under 16 MB (measured: 2 to 4 MB) and the thread count "
         "returns to its level; every answer and the last one exact"),
    Case("200-widget-runs", "sessions", "200 runs of one widget",
         "the same bounds on memory and threads; every run shows the exact answer"),
    # Remote servers and batches (tiny servers on 127.0.0.1) ------------------------------------
    Case("key-in-server-text", "remote", "a server echoing `Bearer <api key>` in an HTTP error, an in-stream "
         "error event, a chunk that is not a chat-completion chunk, an event that is not JSON; a 401 naming "
         "another `Bearer` token",
         "RemoteError with the key and any Bearer token shown as *** (before: the in-stream error and the odd "
         "chunk showed the key)"),
    Case("keep-alive-after-first-token", "remote", "after the first token, only `: keep-alive` comments or "
         "empty chunks for longer than `timeout`; a slow answer longer than `timeout`, with a token every eighth of it",
         "RemoteTimeoutError after `timeout` ('no more of the answer after 1 tokens'), the connection closed, "
         "the first token delivered (before: kept alive for ever); the slow answer completes"),
    Case("server-ignores-max-tokens", "remote", "a server streaming 2001 tokens to a request for 5; one that "
         "sends 5, then its finish and usage; one that sends 5 and goes silent",
         "5 tokens, finish reason 'length', the connection closed at the 6th (before: all 2001); the server's "
         "own finish and usage are kept; silence after the bound ends the answer within 2 s, no error"),
    Case("bad-base-url", "remote", "base_url with port 'abc' or 99999, no host, a user and password, "
         "a ?query or #fragment, no scheme",
         "RequestError saying how to write it, never showing the password (before: httpx's InvalidURL, or "
         "the password in the model's name)"),
    Case("invalid-text", "remote", "a server sending invalid UTF-8 bytes, an emoji as two escaped surrogate "
         "halves in two chunks, a lone half",
         "U+FFFD for the bad bytes and the lone half, the emoji joined; the batch writes the caption (before: a "
         "lone half crashed its write with UnicodeEncodeError)"),
    Case("huge-event", "remote", "a server sending an endless line, an event of 20 MB, an error body of 20 MB",
         "RemoteError 'an event of more than 1,048,576 characters' once a mebibyte is buffered; the error "
         "body is read to 64 kB and its message clipped; the connection closed"),
    Case("batch-transient-failures", "remote", "a remote batch meeting 503, 429, 502 (Retry-After 0, 1 s, a "
         "date, garbage), connections dropped before or during the answer; one picture always failing; a "
         "server down for good; an error ending the run while two captions finish",
         "each picture tried up to 3 times, waiting 1 s doubling or the Retry-After (capped at 30 s); every "
         "caption kept; what still fails is in `failed`, listed once at the end; 5 failures in a row end the "
         "run with RemoteError saying to run again (before: one 503 ended the run)"),
    Case("batch-same-file-twice", "remote", "a second batch run on the output file of a run in progress",
         "RequestError at once naming the file (the first holds a lock on it); each picture written once"),
    Case("batch-bad-output", "remote", "out an existing folder, in a missing folder; out a picture, notes, "
         "or a file with a line that is not a record",
         "RequestError before any work (the command line shows it, not IsADirectoryError); a file a batch did "
         "not write is left untouched (before: its last line was cut off)"),
    Case("batch-crash-tail", "remote", "the output file ending in half a record, or in 4096 zero bytes "
         "(what a crash can leave)",
         "the tail is dropped and that picture captioned again; each picture once"),
    Case("batch-concurrency", "remote", "concurrency 0, -1, True, 2.5, '4', 257, 10**9; concurrency 120",
         "RequestError: a whole number from 1 to 256, before any work (before: 10**9 was taken, a thread "
         "and a connection per picture); 120 requests in flight at once (before: httpx's pool held all but "
         "100 back while their timeout ran)"),
    Case("odd-answers", "remote", "a server answering 307 to another address; chunks carrying `\"error\": null`",
         "RemoteError naming the address to use as base_url, the redirect not followed (before: 'did not answer "
         "with a stream of events'); the chunks are read as the answer (before: 'reported an error: null')"),
    Case("batch-bad-picture-once", "remote", "a picture that cannot be read, in a batch from the command line",
         "reported once, after the bar ('failed: <path>: <why>'); the bar shows only the count (before: twice)"),
    # Devices, conversations, any checkpoint, overlays ----------------------------------------
    Case("absent-device", "new-parts", "device='cuda', 'cuda:1' or 'mps' on a machine without them; device='tpu', "
         "dtype='int4'; int8 with dtype='bfloat16'; a remote model given a device",
         "DeviceError from the constructor, before anything loads, listing the devices present; RequestError "
         "naming the choices for the rest; a model made next answers exactly"),
    Case("chat-while-streaming", "new-parts", "a second chat.ask while the first turn still streams",
         "RequestError: finish or cancel the previous answer first; the first turn completes and the next "
         "ask is answered exactly"),
    Case("chat-overflow", "new-parts", "a conversation asked on until it outgrows the model's context",
         "RequestError telling to chat.reset(), never truncated; the refused turn leaves no trace; after "
         "reset() the chat answers exactly"),
    Case("overlay-bad-detection", "new-parts", "overlay with NaN, out-of-range, bool or missing coordinates",
         "RequestError saying what a detection must be; the picture passed in is unchanged"),
    Case("hub-code-checkpoint", "new-parts", "a checkpoint whose config needs the repository's own code "
         "(auto_map with an unknown model type)",
         "CheckpointError: vlm-notebook never runs code from the Hub; nothing is imported or run"),
)

BY_ID: dict[str, Case] = {case.id: case for case in CASES}
#: case id -> names of the tests that cover it, filled in as the test modules are imported
COVERED: dict[str, list[str]] = {}

F = TypeVar("F", bound=Callable[..., object])


def covers(*case_ids: str) -> Callable[[F], F]:
    """Mark a test as trying the cases ``case_ids`` (each must be declared in ``CASES``)."""

    def mark(test: F) -> F:
        for case_id in case_ids:
            if case_id not in BY_ID:
                raise KeyError(f"{test.__name__} covers undeclared case {case_id!r}")
            COVERED.setdefault(case_id, []).append(getattr(test, "__name__", repr(test)))
        return test

    return mark


def render_table() -> str:
    """docs/reliability.md: one table per theme, a row per case."""
    lines = [
        "# Reliability: what was tried and what happens",
        "",
        "Generated from `tests/reliability_cases.py` (`.venv/bin/python tests/reliability_cases.py`);",
        "`tests/test_reliability_table.py` fails if this file differs or a case has no test. Every case runs on",
        "the shipped checkpoints (`shapes-smolvlm`; `shapes-qwen2vl` where the family matters), and after",
        "every error or fault the same loaded model answers the next good request exactly.",
    ]
    for theme, title in THEMES.items():
        lines += ["", f"## {title}", "", "| case | tried | what happens |", "|---|---|---|"]
        lines += [f"| `{c.id}` | {_cell(c.tried)} | {_cell(c.happens)} |" for c in CASES if c.theme == theme]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe, even in a code span, would end the table cell


def main() -> None:
    TABLE_PATH.write_text(render_table(), encoding="utf-8")
    print(f"wrote {TABLE_PATH}")


if __name__ == "__main__":
    main()
