#!/usr/bin/env python3
"""Reference fixtures for tests/test_data_tokenizer.cpp, recorded with the Hugging Face `tokenizers` library.

Needs PyPI `tokenizers` (never needed by CI: the outputs are committed). Run from the repository root:

  python3 -m venv /work/venv-tok && /work/venv-tok/bin/pip install tokenizers
  # 1. (optional) refresh the committed text sample from data_work/corpus/<lang>.jsonl
  /work/venv-tok/bin/python scripts/reference/make_tokenizer_fixtures.py sample
  # 2. train the four small HF tokenizers and record their ids on held-out lines and hard cases
  /work/venv-tok/bin/python scripts/reference/make_tokenizer_fixtures.py hf
  # 2b. pipeline variants of those tokenizers (other pre-tokenizers, normalizers, unk handling, added tokens)
  /work/venv-tok/bin/python scripts/reference/make_tokenizer_fixtures.py variants
  # 3. train with polder on the same sample, then record HF's ids for the file polder wrote
  python3 scripts/reference/make_tokenizer_fixtures.py jsonl /tmp/tok_sample.jsonl
  build/cli/polder tokenizer train --input /tmp/tok_sample.jsonl --vocab-size 1200 \
      --out tests/fixtures/tokenizer/polder_trained.json
  /work/venv-tok/bin/python scripts/reference/make_tokenizer_fixtures.py polder

Kinds: gpt2 (ByteLevel pre-tokenizer with the GPT-2 regex), llama3 (Split with the Llama-3 regex, then
ByteLevel(use_regex=false), ignore_merges), spm_legacy (Llama-2/Mistral style: Prepend+Replace normalizers,
byte fallback, Replace/ByteFallback/Fuse/Strip decoder), spm_metaspace (Metaspace prepend_scheme=first,
byte fallback, Metaspace decoder, as newer Mistral/EuroLLM conversions).
"""
import json
import os
import sys

FIX = "tests/fixtures/tokenizer"
LANGS = ["nl", "en", "de", "fr", "es", "it", "pt", "sv", "da", "cs", "ro", "el", "ca"]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

HARD_CASES = [
    "", " ", "  ", "   leading spaces", "trailing spaces   ", "tab\there", "\t\t", "new\nline", "\n\n\n",
    "mixed \t \n whitespace \r\n end", "1234567", "3,14", "3.14159 en 2024-05-01", "tel. 020-1234567",
    "emoji 😀👍🏽 en 🇳🇱", "café met e\u0301 combining", "IJsselmeer en ijs, de ĳ en Ĳ", "zo'n auto's",
    "'s Avonds en 's-Hertogenbosch", "I'm we'll they've DON'T", "中文字符和日本語のテキスト", "한국어 텍스트",
    "Ελληνικά κείμενα", "Ünïcödé Ærø Œuvre straße", "a", "!!!???...", "«guillemets» „Anführungszeichen“",
    "C++ code: for (int i = 0; i < n; ++i) { x[i] *= 2; }", "https://www.example.nl/pad?q=1&r=2",
    "Hallo<|end_of_text|>wereld", "<|begin_of_text|>Begin", "<s>Hallo</s> wereld", " <s> spaties </s> ",
    "<mask> met strip <mask>rechts", "zero\u200bwidth and nbsp\u00a0here", "\u00ad soft hyphen", "▁ already metaspace",
    "het\u180e're %\u180en't (U+180E is not whitespace for HF)", "nel\u0085line\u2028sep\u3000ideo",
]


def fuzz_lines(n, seed=1234):
    """Random mixes of tricky characters and words (whitespace of every kind, scripts, marks, special tokens)."""
    import random
    rng = random.Random(seed)
    pool = (list(" \t\n\r\x0b\x0c\u0085\u00a0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000\u200b\u180e\ufeff\u00ad")
            + list("aZéÉĳĲßøœ'’`\"-_.,;:!?()<>/\\|@#%&*+=~0123456789٣１²½ⅷ①")
            + ["'s", "'S", "'ll", "'RE", "n't", "e\u0301", "😀", "👍🏽", "🇳🇱", "中文", "한국어", "Ελλ", "Кир", "עברית", "العربية",
               "हिन्दी", "<s>", "</s>", "<|end_of_text|>", "<mask>", "<|endoftext|>", "▁", "<0x41>", "\r\n", "\n\n"])
    words = ["het", "een", "Amsterdam", "ijsje", "café", "straße", "Ουρανός", "hello", "1234567", "3,14", "zo'n"]
    return ["".join(rng.choice(pool) if rng.random() < 0.6 else rng.choice(words) for _ in range(rng.randint(1, 20)))
            for _ in range(n)]


def read_jsonl(path, limit_bytes):
    docs, total = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            t = json.loads(line)["text"]
            docs.append(t)
            total += len(t.encode())
            if total >= limit_bytes:
                break
    return docs


def cmd_sample():
    """tests/fixtures/tokenizer/sample.jsonl: ~10 KB of training text per language plus held-out documents."""
    out = []
    for lang in LANGS:
        path = f"data_work/corpus/{lang}.jsonl"
        if not os.path.exists(path):
            continue
        docs = read_jsonl(path, 60_000)
        # Documents are split into paragraphs; the first ~10 KB train, a few later paragraphs are held out.
        paras = [p for d in docs for p in d.split("\n\n") if p.strip()]
        budget = 16_000 if lang == "nl" else 6_000
        n = 0
        train = []
        while n < len(paras) and sum(len(p.encode()) for p in train) < budget:
            train.append(paras[n])
            n += 1
        held = [p for p in paras[n + 20:] if 40 < len(p) < 300][:3]
        out.append({"lang": lang, "train": train, "heldout": held})
    with open(f"{FIX}/sample.json", "w", encoding="utf-8") as f:
        f.write("[\n" + ",\n".join(json.dumps(x, ensure_ascii=False) for x in out) + "\n]\n")
    print("sample:", sum(len(json.dumps(x, ensure_ascii=False).encode()) for x in out), "bytes")


def load_sample():
    with open(f"{FIX}/sample.json", encoding="utf-8") as f:
        sample = json.load(f)
    train = [p for s in sample for p in s["train"]]
    held = [p for s in sample for p in s["heldout"]]
    return train, held


def train_gpt2(train):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(train, trainer)
    return tok


def train_llama3(train):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"], show_progress=False)
    tok.train_from_iterator(train, trainer)
    tok.add_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False, special=True)])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    return tok


def train_spm(train, legacy):
    """SentencePiece-style BPE: trained on Metaspace words, then rebuilt like a converted Llama/Mistral file."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(vocab_size=1000, limit_alphabet=120, show_progress=False)
    base.train_from_iterator(train, trainer)
    trained = json.loads(base.to_str())
    # Mistral layout: <unk> <s> </s>, then the 256 byte tokens, then the learned vocabulary.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for t, _ in sorted(trained["model"]["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = [m.split(" ") if isinstance(m, str) else m for m in trained["model"]["merges"]]
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    doc = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                    {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }
    if legacy:
        doc["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        doc["decoder"] = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
        doc["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    return Tokenizer.from_str(json.dumps(doc, ensure_ascii=False))


def record(tok, lines):
    cases = []
    for text in lines:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids,
                      "ids_special": tok.encode(text, add_special_tokens=True).ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False)})
        # Decoded texts are left out where they equal what the test already knows (size of the fixtures).
        skip = tok.decode(ids, skip_special_tokens=True)
        if skip != cases[-1]["decoded"]:
            cases[-1]["decoded_skip"] = skip
        if cases[-1]["decoded"] == text:
            del cases[-1]["decoded"]
    return cases


def write_expected(name, cases):
    # One case per line keeps the file small and diffs readable.
    with open(f"{FIX}/expected_{name}.json", "w", encoding="utf-8") as f:
        f.write('{"tokenizer": "%s.json", "cases": [\n' % name)
        f.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")


def save(name, tok, lines):
    with open(f"{FIX}/{name}.json", "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=False))
    write_expected(name, record(tok, lines))


def cmd_hf():
    import tokenizers
    train, held = load_sample()
    lines = HARD_CASES + fuzz_lines(40) + held
    save("gpt2", train_gpt2(train), lines)
    save("llama3", train_llama3(train), lines)
    save("spm_legacy", train_spm(train, legacy=True), lines)
    save("spm_metaspace", train_spm(train, legacy=False), lines)
    print(f"tokenizers {tokenizers.__version__}: {len(lines)} lines per kind")


def variant_specs():
    """Pipeline variants of the fixture tokenizers: (name, base file, top-level replacements, model replacements,
    extra added tokens). They cover the components the four kinds above do not use."""
    l3 = json.load(open(f"{FIX}/llama3.json", encoding="utf-8"))
    pat = l3["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    bl_re = dict(bl, use_regex=True)
    def seq(*p):
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(p)}}
    meta = lambda **kw: dict({"type": "Metaspace", "replacement": "▁", "split": True}, **kw)
    v = [("bl_prefix", "gpt2.json", {"pre_tokenizer": dict(bl_re, add_prefix_space=True)}, {}, [])]
    for beh in ["Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        v.append((f"split_{beh}", "gpt2.json",
                  seq({"type": "Split", "pattern": pat, "behavior": beh, "invert": False}, bl), {}, []))
    v += [
        ("split_invert", "gpt2.json", seq({"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed",
                                           "invert": True}, bl), {}, []),
        ("split_string", "gpt2.json", seq({"type": "Split", "pattern": {"String": "e"},
                                           "behavior": "MergedWithPrevious", "invert": False}, bl_re), {}, []),
        ("digits", "gpt2.json", seq({"type": "Digits", "individual_digits": True}, bl_re), {}, []),
        ("digits_grouped", "gpt2.json", seq({"type": "Digits", "individual_digits": False}, bl_re), {}, []),
        ("whitespace_split", "gpt2.json", seq({"type": "WhitespaceSplit"}, bl), {}, []),
        ("metaspace_split", "spm_legacy.json", {"normalizer": None, "pre_tokenizer": meta(prepend_scheme="always"),
                                                "decoder": meta(prepend_scheme="always")}, {}, []),
        ("metaspace_never", "spm_legacy.json", {"normalizer": None, "pre_tokenizer": meta(prepend_scheme="never"),
                                                "decoder": meta(prepend_scheme="never")}, {}, []),
        ("metaspace_legacy", "spm_legacy.json",
         {"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True},
          "decoder": {"type": "Metaspace", "replacement": "▁", "add_prefix_space": True}}, {}, []),
        ("strip_replace_regex", "gpt2.json", {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Strip", "strip_left": True, "strip_right": True},
            {"type": "Replace", "pattern": {"Regex": r"\d+"}, "content": "#"}]}}, {}, []),
        ("unk_no_fuse", "spm_legacy.json", {}, {"byte_fallback": False, "fuse_unk": False}, []),
        ("unk_fuse", "spm_legacy.json", {}, {"byte_fallback": False, "fuse_unk": True}, []),
        ("added_mix", "gpt2.json", {}, {}, [
            {"id": 1000, "content": "het", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True,
             "special": False},
            {"id": 1001, "content": " een", "single_word": False, "lstrip": False, "rstrip": True, "normalized": False,
             "special": False},
            {"id": 1002, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": True,
             "special": True}]),
        ("roberta", "gpt2.json", {"post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 0],
                                                     "cls": ["<|endoftext|>", 0], "trim_offsets": True,
                                                     "add_prefix_space": False}}, {}, []),
    ]
    return v


def apply_variant(base, top, model, extra):
    doc = json.loads(json.dumps(base))
    doc.update(top)
    doc["model"].update(model)
    doc["added_tokens"] = doc["added_tokens"] + extra
    return doc


def cmd_variants():
    """expected_variants.json: ids (plain and with special tokens) of every variant on a few hard lines."""
    from tokenizers import Tokenizer
    texts = [t for t in HARD_CASES if t][:20] + fuzz_lines(8, seed=99) + [
        "½het, éhet, het\u0301 en _het", "x het y", "zo een  een"]
    out = []
    for name, base, top, model, extra in variant_specs():
        doc = apply_variant(json.load(open(f"{FIX}/{base}", encoding="utf-8")), top, model, extra)
        tok = Tokenizer.from_str(json.dumps(doc, ensure_ascii=False))
        ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        special = [tok.encode(t, add_special_tokens=True).ids for t in texts]
        decoded = [tok.decode(i, skip_special_tokens=False) for i in ids]
        # To keep the file small: ids_special only where the post-processor changes something, decoded only where
        # it differs from the text.
        entry = {"name": name, "base": base, "top": top, "model": model, "added": extra, "ids": ids}
        if special != ids:
            entry["ids_special"] = special
        entry["decoded"] = {str(k): d for k, (d, t) in enumerate(zip(decoded, texts)) if d != t}
        out.append(entry)
    with open(f"{FIX}/expected_variants.json", "w", encoding="utf-8") as f:
        f.write('{"texts": ' + json.dumps(texts, ensure_ascii=False) + ',\n"variants": [\n')
        f.write(",\n".join(json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in out))
        f.write("\n]}\n")
    print(f"{len(out)} variants x {len(texts)} lines")


def cmd_jsonl():
    """The training part of the sample as JSONL, the input format of `polder tokenizer train`."""
    with open(f"{FIX}/sample.json", encoding="utf-8") as f:
        sample = json.load(f)
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        for s in sample:
            for p in s["train"]:
                f.write(json.dumps({"text": p, "lang": s["lang"]}, ensure_ascii=False) + "\n")


def cmd_polder():
    from tokenizers import Tokenizer
    _, held = load_sample()
    tok = Tokenizer.from_file(f"{FIX}/polder_trained.json")
    write_expected("polder_trained", record(tok, HARD_CASES + fuzz_lines(40) + held))
    print("recorded HF ids for polder_trained.json")


if __name__ == "__main__":
    {"sample": cmd_sample, "hf": cmd_hf, "variants": cmd_variants, "jsonl": cmd_jsonl,
     "polder": cmd_polder}[sys.argv[1] if len(sys.argv) > 1 else "hf"]()
