#!/usr/bin/env python3
"""Golden ids for the tokenizer.json byte-level BPE tokenizer (calib/bpe_tokenizer.cpp).

Three small byte-level BPE tokenizers, trained with the Hugging Face `tokenizers` library on
TinyStories text (../shared/data/tinystories) plus the multilingual lines below, are committed as
tests/data/bpe/<name>/tokenizer.json:

* llama3 — Llama 3's Split regex + ByteLevel(use_regex=False), ignore_merges, <|begin_of_text|>
  prepended by a TemplateProcessing post-processor (inside a Sequence, as Llama 3.1 has it);
* gpt2 — ByteLevel(use_regex=True) alone, no BOS, merges stored in the "a b" string form;
* qwen2 — NFC normalizer, Qwen2's Split regex + ByteLevel, chat special tokens, and added tokens
  with lstrip / rstrip, single_word and normalized set.

Then every text of the corpus (held-out TinyStories lines and hand-written hard cases) is encoded
by the library with each tokenizer, as loaded back from the committed file, and the ids go to
tests/golden/data/bpe_goldens.json, with: variants (a tokenizer with JSON edits, encoded the same
way), the TinyStories file encoded as mixq's read_token_stream does it (length and FNV-1a hash),
NFC of the hard cases by unicodedata, and a few decodes.

Every code point is also checked against the library's regex engine: its \\p{L} / \\p{N} / \\s class
and (?i:) case folding must be what calib/unicode_data.cpp and calib/bpe_tokenizer.cpp use.

Usage: .venv/bin/python tests/golden/make_bpe_goldens.py [--retrain]
Without --retrain the committed tokenizer files are kept and only the goldens are rewritten
(deterministically). Retraining does not reproduce the committed files byte for byte: the trainer
breaks ties between equally frequent pairs in hash order. Needs `tokenizers` (0.23.3 wrote the
committed files) and ../shared/data/tinystories.
"""
import argparse
import copy
import importlib.util
import json
import os
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
STORIES = os.path.join(SHARED, "data", "tinystories", "TinyStories-valid-reduced.txt")
DATA = os.path.join(ROOT, "tests", "data", "bpe")
OUT = os.path.join(ROOT, "tests", "golden", "data", "bpe_goldens.json")

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
TRAIN_STORIES = 170  # stories[:170] train, the remaining 31 are held out

# Extra training text, so the vocabularies hold merges for scripts and symbols TinyStories lacks.
EXTRA = [
    "你好，世界！今天天气很好。我们去公园玩吧。小猫在树下睡觉。",
    "日本語のテキストです。東京は大きな都市です。ありがとうございます。",
    "한국어 텍스트입니다. 안녕하세요, 만나서 반갑습니다.",
    "Καλημέρα κόσμε. Η γάτα κοιμάται στον ήλιο. Ευχαριστώ πολύ.",
    "Привет, мир! Кошка спит на солнце. Большое спасибо, друзья.",
    "مرحبا بالعالم. القطة نائمة في الشمس. شكرا جزيلا.",
    "שלום עולם. החתול ישן בשמש. תודה רבה.",
    "नमस्ते दुनिया। बिल्ली धूप में सो रही है। बहुत धन्यवाद।",
    "สวัสดีชาวโลก แมวนอนหลับอยู่กลางแดด ขอบคุณมาก",
    "naïve café résumé façade Zürich Ærøskøbing São Paulo señor",
    "emoji 😀😀 👍🏽 ❤️ 🎉🎉 🇫🇷 👨‍👩‍👧‍👦 🐱🐶",
    "numbers 0 1 2 3 12 123 1234 12345 2024 3.14159 1,000,000 ½ ² ³ ١٢٣",
    "math ∑ x_i² ≤ ∞ ≠ √2 ± π → ⇒ ∀ε>0 ∃δ",
    "I'm, you're, he's, we've, they'll, I'd, don't, can't, won't, IT'S, WE'LL",
    "def f(x):\n    return x**2  # square\n\nif (a && b) { c++; }\n",
    "https://example.com/path?q=1&r=2 user@example.com <b>bold</b>",
    "\t\tindented\n\n\n  spaced   out   text  \r\nwindows line\r\n",
]

# Hand-written hard cases (each tokenizer encodes all of them).
HARD = [
    "", " ", "  ", "\n", "\n\n\n", "\t\t", " \t \n ", "hello   ", "hello \n", "   hello",
    "  multiple   spaces   here  ", "a\n\n\nb", "a \n b", "x\t\ty", "end\n", "\r\n\r\n",
    "line1\nline2\r\nline3\rline4", "word \n\n  next", "tabs\tand\u000bvertical\u000cfeed",
    "1234567", "3.14159", "12,345,678", "year 2024!", "x1y22z333w4444", "١٢٣٤٥ ٦", "²³ Ⅻ ½ ⑦",
    "I'M", "don't", "WE'LL", "they'RE", "it'S", "you'Ve", "I'd", "'s", "'", "''", "it'ſ", "can't've",
    "rock'n'roll", "Tom's 3 cats' toys", "O'Neil's", "'LL 'll 'Ll", "naïve café résumé",
    "你好，世界！", "日本語のテキストです。", "한국어 텍스트", "\u1100\u1161\u11a8 jamo",
    "😀👍🏽 family: 👨‍👩‍👧‍👦", "🇫🇷 flag", "❤️", "😀",
    "e\u0301 vs \u00e9", "a\u0308\u0301", "q\u0307\u0323", "\u0301 leading combining", "\u212b angstrom",
    "\u0958 excluded", "\u1e9b\u0323", "\u0041\u030a\u0327", "\u1e0b\u0323", "ǅ ʰ ſ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "Καλημέρα κόσμε", "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
    "∑_{i=1}^{n} x_i² ≤ ∞ ≠ √2 ± π", "a→b ⇒ c", "f(x) = 3x² + 2x − 1",
    "\u00a0nbsp", "\u200b zero width", "\ufeffBOM", "\U0010ffff", "\u0085 NEL", "\u2028\u2029",
    "\x00 nul", "\x1c\x1d\x1e\x1f", "a\u180eb", "\u3000ideographic\u3000space", "\ue000 private",
    "\ufffe\uffff", "\ufffd replacement", "\u2000\u2001 a \u2002", "x\u00a0\u00a0y",
    "def f(x):\n    return x**2  # comment\n", "if (a && b) { c++; }", "https://example.com/path?q=1&r=2",
    "user@example.com", "<html><body>Hi</body></html>", "supercalifragilisticexpialidocious " * 3,
    "a" * 40, "!!!!!!", "......", "----", "???!!!", "Hello<|endoftext|>world",
    "<|begin_of_text|>start", "a <|im_start|> b", "<|endoftext|><|endoftext|>", "<|endoftext",
    "<|end_of_text|>", "x<|im_end|>\n", "Anthony ony ony. ony_x (ony)", "a   <tool>   b", "x<tool>y",
    "cafe\u0301 and café", "<|eot_id|><|reserved_special_token_0|>",
    "it'Sok we'LLgo they'REady x'ſy I'Mhere 'sand 'tis", "don'Tcare O'DELL'S", "\u00a0\u00a0word x\u2003\u2003y",
    "a\u00a0\u00a0\u00a0", "\u3000\u3000\u3000x", "x\u0085\u0085y", "\u1680\u1680ogham", "v\u202f\u202fw",
]


def check_classes():
    """Every code point against the library's own regex engine (Oniguruma): is it \\p{L}, \\p{N}, \\s,
    and which letters fold onto the contraction letters under (?i:...)? The answers must be the
    classes calib/make_unicode_tables.py writes (from this Python's unicodedata) and the folding
    calib/bpe_tokenizer.cpp does (A-Z, and U+017F onto s). Returns the disagreements."""
    spec = importlib.util.spec_from_file_location("tables", os.path.join(ROOT, "calib", "make_unicode_tables.py"))
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    gpt2 = pre_tokenizers.Split(Regex(GPT2), behavior="isolated")
    llama3 = pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated")
    pieces = lambda split, text: [p for p, _ in split.pre_tokenize_str(text)]
    bad = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        cls = tables.char_class(cp)
        letter = cls == tables.LETTER
        number = cls in (tables.DECIMAL, tables.LETTER_NUMBER, tables.OTHER_NUMBER)
        # a letter continues "a", a number continues "1", anything else continues "!" ([^\s\p{L}\p{N}])
        got_l, got_n, got_p = (len(pieces(gpt2, lead + c)) == 1 for lead in "a1!")
        want = (letter, number, not letter and not number and cls != tables.SPACE)
        if (got_l, got_n, got_p) != want:
            bad.append([cp, "class", [got_l, got_n, got_p], list(want)])
        if letter:
            f = c.lower() if "A" <= c <= "Z" else ("s" if cp == 0x17F else c)
            for probe, expected in [
                    ("'" + c + "x", ["'" + c, "x"] if f in "stmd" else ["'" + c + "x"]),
                    ("'" + c + "ex", ["'" + c, "ex"] if f in "stmd" else ["'" + c + "e", "x"] if f in "rv" else ["'" + c + "ex"]),
                    ("'l" + c + "x", ["'l" + c, "x"] if f == "l" else ["'l" + c + "x"]),
                    ("'r" + c + "x", ["'r" + c, "x"] if f == "e" else ["'r" + c + "x"])]:
                got = pieces(llama3, probe)
                if got != expected:
                    bad.append([cp, "fold", probe, got])
    return bad


def stories():
    with open(STORIES, encoding="utf-8") as f:
        text = f.read()
    return [d.strip() for d in text.split("<|endoftext|>") if d.strip()]


def add_whole_words(j, tok, docs, count=40):
    """Adds to the vocab (new ids, no merges) the most frequent pre-tokens that the merges split into
    three or more tokens, as tokenizers converted from tiktoken have: only ignore_merges emits them."""
    freq = {}
    for d in docs:
        for piece, _ in tok.pre_tokenizer.pre_tokenize_str(d):
            freq[piece] = freq.get(piece, 0) + 1
    vocab = j["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for piece, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])):
        word = piece.replace("Ġ", " ", 1)
        if piece not in vocab and word.strip().isascii() and word.strip().isalpha() and \
                len(tok.encode(word, add_special_tokens=False).ids) >= 3:
            vocab[piece] = next_id
            next_id += 1
            count -= 1
            if count == 0:
                break


def train(kind, docs):
    if kind == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"]
        tok = Tokenizer(models.BPE(ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
        vocab = 1600
    elif kind == "gpt2":
        specials = ["<|endoftext|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        vocab = 1200
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
        vocab = 1400
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(docs + EXTRA * 3 + HARD, trainer=trainer)
    if kind == "llama3":
        bos = "<|begin_of_text|>"
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if kind == "qwen2":
        tok.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False, special=False),
                        AddedToken("ony", single_word=True, normalized=True, special=False),
                        AddedToken("caf\u00e9", normalized=True, special=False)])
    j = json.loads(tok.to_str())
    if kind == "gpt2":  # the older "a b" form of merges
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    if kind == "llama3":
        assert j["model"]["ignore_merges"] is True
        add_whole_words(j, tok, docs)
    return j


def set_pointer(j, pointer, value):
    """Sets the JSON Pointer (RFC 6901) `pointer` of j to value."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    for p in parts[:-1]:
        j = j[int(p)] if isinstance(j, list) else j[p]
    if isinstance(j, list):
        j[int(parts[-1])] = value
    else:
        j[parts[-1]] = value


VARIANTS = [
    ("gpt2_prefix_space", "gpt2", [["/pre_tokenizer/add_prefix_space", True]]),
    ("gpt2_digits", "gpt2", [["/pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}]]),
    ("gpt2_digit_runs", "gpt2", [["/pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False},
        {"type": "Digits", "individual_digits": False}]}]]),
    ("llama3_merges_only", "llama3", [["/model/ignore_merges", False]]),
    ("llama3_split_removed", "llama3", [["/pre_tokenizer/pretokenizers/0/behavior", "Removed"]]),
    ("qwen2_no_nfc", "qwen2", [["/normalizer", None]]),
    ("qwen2_as_gpt2_split", "qwen2", [["/pre_tokenizer/pretokenizers/0/pattern/Regex",
                                       r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"]]),
]


def fnv1a64(ids):
    h = 0xcbf29ce484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--retrain", action="store_true", help="retrain and rewrite the tokenizer files too")
    args = ap.parse_args()
    docs = stories()
    names = ["llama3", "gpt2", "qwen2"]
    for name in names:
        path = os.path.join(DATA, name, "tokenizer.json")
        if args.retrain or not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                json.dump(train(name, docs[:TRAIN_STORIES]), f, ensure_ascii=False, separators=(",", ":"))
                f.write("\n")
    raw = {n: json.load(open(os.path.join(DATA, n, "tokenizer.json"), encoding="utf-8")) for n in names}
    loaded = {n: Tokenizer.from_file(os.path.join(DATA, n, "tokenizer.json")) for n in names}

    held = [line for d in docs[TRAIN_STORIES:] for line in d.split("\n") if line.strip()]
    texts = HARD + held
    out = {
        "generator": f"tests/golden/make_bpe_goldens.py, tokenizers {tokenizers.__version__}, "
                     f"Python {sys.version.split()[0]}",
        "texts": texts,
        "hard_cases": len(HARD),
        "tokenizers": {},
        "variants": [],
    }
    for n in names:
        t = loaded[n]
        out["tokenizers"][n] = {
            "file": f"tests/data/bpe/{n}/tokenizer.json",
            "ids": [t.encode(s, add_special_tokens=False).ids for s in texts],
            # add_special_tokens=True on a few texts: what the post-processor adds
            "with_special_tokens": [[s, t.encode(s, add_special_tokens=True).ids] for s in ["", "Once upon a time", " x"]],
            # the pre-tokenizer alone on the hard cases and the first held-out lines
            "pre_tokens": [[p for p, _ in t.pre_tokenizer.pre_tokenize_str(s)] for s in texts[:len(HARD) + 40]],
            "vocab_size": max(max(raw[n]["model"]["vocab"].values()), max(a["id"] for a in raw[n]["added_tokens"])) + 1,
        }
    variant_texts = HARD + held[:40]
    for vname, base, edits in VARIANTS:
        j = copy.deepcopy(raw[base])
        for pointer, value in edits:
            set_pointer(j, pointer, value)
        t = Tokenizer.from_str(json.dumps(j))
        ids = [t.encode(s, add_special_tokens=False).ids for s in variant_texts]
        plain = [loaded[base].encode(s, add_special_tokens=False).ids for s in variant_texts]
        differ = sum(a != b for a, b in zip(ids, plain))
        assert differ > 0, f"variant {vname} encodes every text as {base} does: it tests nothing"
        v = {"name": vname, "base": base, "edits": edits, "texts": len(variant_texts), "ids": ids,
             "differing_from_base": differ}
        if any(pointer.startswith("/pre_tokenizer") for pointer, _ in edits):
            v["pre_tokens"] = [[p for p, _ in t.pre_tokenizer.pre_tokenize_str(s)] for s in HARD]
        out["variants"].append(v)

    # The product's document rule over the whole TinyStories file with the llama3 tokenizer:
    # [BOS] + ids per stripped, non-empty document.
    stream = []
    t = loaded["llama3"]
    bos = t.token_to_id("<|begin_of_text|>")
    for d in docs:
        stream += [bos] + t.encode(d, add_special_tokens=False).ids
    out["tinystories_llama3"] = {"tokens": len(stream), "fnv1a64_u32le": fnv1a64(stream), "first": stream[:64]}

    bad = check_classes()
    out["class_check"] = {"what": "every code point's \\p{L} / \\p{N} / \\s class and (?i:) folding as the library's "
                                  "regex engine sees them, against calib/unicode_data.cpp's tables",
                          "disagreements": bad}
    print(f"class check: {len(bad)} code points disagree {bad[:10]}")
    nfc = normalizers.NFC()
    out["nfc"] = [[s, nfc.normalize_str(s)] for s in HARD if nfc.normalize_str(s) != s]
    g = loaded["gpt2"]
    byte_e4 = g.token_to_id("ä")  # the byte 0xE4 alone: a lone lead byte decodes to U+FFFD
    out["decodes"] = [
        {"tokenizer": "gpt2", "ids": ids, "skip_special_tokens": skip, "text": g.decode(ids, skip_special_tokens=skip)}
        for ids, skip in [(g.encode("héllo wörld 😀").ids, False), ([byte_e4], False), ([byte_e4, g.token_to_id("a")], False),
                          (g.encode("a<|endoftext|>b").ids, False), (g.encode("a<|endoftext|>b").ids, True)]
    ]
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    sizes = {n: os.path.getsize(os.path.join(DATA, n, "tokenizer.json")) for n in names}
    print(f"{OUT}: {len(texts)} texts ({len(HARD)} hard cases), {len(VARIANTS)} variants, "
          f"goldens {os.path.getsize(OUT)} bytes, tokenizers {sizes}")
    for v in out["variants"]:
        print(f"  variant {v['name']}: {v['differing_from_base']} of {v['texts']} texts differ from {v['base']}")


if __name__ == "__main__":
    main()
