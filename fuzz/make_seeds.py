#!/usr/bin/env python3
"""Seed corpora and dictionaries for the fuzz targets (scripts/fuzz.sh), made from the
repository's own fixtures and assets: OUT/<target>/ (one file per seed) and OUT/<target>.dict
(libFuzzer dictionary: JSON punctuation plus every key and short string found in the seeds).
Seeds are kept small (a few KiB where possible): the fuzzer mutates them many times a second."""
import json, os, struct, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1]


def rd(rel):
    with open(os.path.join(root, rel), "rb") as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


words = set()


def collect(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            words.add(k)
            collect(v)
    elif isinstance(obj, list):
        for v in obj[:50]:
            collect(v)
    elif isinstance(obj, str) and len(obj) < 40:
        words.add(obj)


def dict_file(target, extra=()):
    toks = ['{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '0', '-1', '1e308', '4294967296',
            '9223372036854775808', '\\u0000', '\\ud800'] + list(extra)
    lines = []
    for w in sorted(words | set(toks)):
        if not w or len(w) > 64:
            continue
        esc = ''.join(c if 32 <= ord(c) < 127 and c not in '"\\' else '\\x%02x' % ord(c) if ord(c) < 256 else ''
                      for c in w)
        if esc:
            lines.append('"%s"' % esc)
    with open(os.path.join(out, target + ".dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


def json_seed(target, name, obj, prefix=b""):
    collect(obj)
    put(target, name, prefix + json.dumps(obj, indent=1).encode())


# safetensors: the small fixture files, plus hand-made edge cases.
n = 0
for dirpath, _, files in os.walk(os.path.join(root, "tests/fixtures")):
    for fn in sorted(files):
        p = os.path.join(dirpath, fn)
        if fn.endswith(".safetensors") and os.path.getsize(p) < 64 * 1024 and n < 12:
            put("safetensors", "fixture_%d" % n, open(p, "rb").read())
            n += 1
hdr = json.dumps({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                  "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]}}).encode()
put("safetensors", "small", struct.pack("<Q", len(hdr)) + hdr + bytes(22))
collect(json.loads(hdr))
dict_file("safetensors", ["F16", "F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "data_offsets"])

# tokenizer.json: the small unigram one, and shrunken BPE / WordPiece ones.
words.clear()
json_seed("tokenizer_json", "unigram", json.loads(rd("tests/fixtures/tokenizers/unigram/tokenizer.json")))
for name, rel in [("gpt2_bpe", "tests/fixtures/tokenizers/gpt2/tokenizer.json"),
                  ("bert_wordpiece", "tests/fixtures/tokenizers/bert-base-uncased/tokenizer.json")]:
    t = json.loads(rd(rel))
    m = t["model"]
    vocab = dict(sorted(m["vocab"].items(), key=lambda kv: kv[1])[:300])
    m["vocab"] = vocab
    if "merges" in m:
        keep = []
        for mg in m["merges"]:
            a, b = mg.split(" ") if isinstance(mg, str) else mg
            if a in vocab and b in vocab and a + b in vocab:
                keep.append(mg)
        m["merges"] = keep
    t["added_tokens"] = [a for a in t.get("added_tokens", []) if a["id"] < 300]
    json_seed("tokenizer_json", name, t)
dict_file("tokenizer_json", ["BPE", "WordPiece", "Unigram", "ByteLevel", "Metaspace", "Sequence", "NFC", "NFKC",
                             "Replace", "Prepend", "Strip", "ByteFallback", "Fuse", "TemplateProcessing",
                             "BertProcessing", "RobertaProcessing", "BertPreTokenizer", "Whitespace", "Split"])

# SentencePiece .model and llama2.c tokenizer.bin / checkpoints.
put("sentencepiece", "stories260K", rd("assets/stories260K/tok512.model"))
put("sentencepiece", "unigram", rd("tests/fixtures/tokenizers/unigram/spiece.model"))
put("llama2c_tokenizer", "stories260K", rd("assets/stories260K/tok512.bin"))
ck = rd("assets/stories260K/stories260K.bin")
put("llama2c_checkpoint", "stories260K", ck)
dim, hid, nl, nh, nkv, vocab, seq = struct.unpack("<7i", ck[:28])
# A one-layer, tiny-vocabulary checkpoint of the same layout (fast to mutate).
d, h, v, s = 8, 16, 12, 8
floats = v * d + d + d * d * 2 + d * d * 2 + d + h * d * 3 + d + s * (d // 2)  # loose upper bound
put("llama2c_checkpoint", "tiny", struct.pack("<7i", d, h, 1, 2, 2, v, s) + bytes(4 * floats))

# Datasets: the first byte picks the format (0 jsonl, 1 json, 2 csv, 3 tsv, 4 txt; +8 skip bad
# rows, +16 txt as one stream).
def first_lines(rel, n=6):
    return b"".join(rd(rel).splitlines(keepends=True)[:n])
put("dataset", "e2e_jsonl", b"\x00" + first_lines("assets/e2e/train.jsonl"))
put("dataset", "alpaca_jsonl", b"\x08" + first_lines("assets/alpaca/alpaca_gpt4_sample.jsonl", 3))
put("dataset", "mt_jsonl", b"\x00" + first_lines("assets/mt/tatoeba-en-ro/train.jsonl"))
put("dataset", "array_json", b"\x01" + json.dumps([{"prompt": "a b", "completion": " c"}, {"prompt": "d", "completion": "e"}]).encode())
put("dataset", "sst2_tsv", b"\x03" + first_lines("assets/glue/SST-2/train.tsv"))
put("dataset", "stsb_tsv", b"\x0b" + first_lines("assets/glue/STS-B/train.tsv"))
put("dataset", "cls_csv", b"\x02" + b'text,label\n"a, b",1\nc,0\n')
put("dataset", "stories_txt", b"\x14" + first_lines("assets/tinystories/valid_sample.txt", 8))
words.clear()
for k in ["text", "label", "prompt", "completion", "instruction", "input", "output", "source", "target", "text_pair",
          "sentence", "sentence1", "sentence2", "translation", "en", "ro"]:
    words.add(k)
dict_file("dataset", ["\\t", "\\n", "\\r\\n", "\"\""])

# Recipes: first byte 0 = JSON, 1 = YAML.
words.clear()
for fn in sorted(os.listdir(os.path.join(root, "recipes"))):
    if fn.endswith(".json"):
        obj = json.loads(rd("recipes/" + fn))
        json_seed("recipe", fn, obj, b"\x00")
        put("recipe", fn + ".yaml", b"\x01" + "".join("%s: %s\n" % (k, json.dumps(v)) for k, v in obj.items()).encode())
dict_file("recipe", ["#", ": ", "- ", "\\n"])

# config.json per family and adapter_config.json per method (first byte = the fixture index
# of fuzz/adapter_config_fuzz.cpp's kMethods).
for fam in ["llama", "gpt2", "bert_cls", "t5"]:
    words.clear()
    json_seed("config_" + fam, "fixture", json.loads(rd("tests/fixtures/hf/models/%s/config.json" % fam)))
    if fam == "t5":
        json_seed("config_" + fam, "v1_1", json.loads(rd("tests/fixtures/hf/models/t5_v1_1/config.json")))
    dict_file("config_" + fam, ["silu", "gelu", "gelu_new", "relu", "gated-gelu", "rope_scaling", "linear", "dynamic"])
methods = ["lora", "rslora", "dora", "ia3", "loha", "lokr", "lokr_decomposed", "adalora", "prompt_tuning", "p_tuning",
           "prefix_tuning"]
words.clear()
for i, m in enumerate(methods):
    json_seed("adapter_config", m, json.loads(rd("tests/fixtures/peft/adapters/llama/%s/adapter_config.json" % m)),
              bytes([i]))
dict_file("adapter_config", ["LORA", "IA3", "LOHA", "LOKR", "ADALORA", "VERA", "PROMPT_TUNING", "P_TUNING",
                             "PREFIX_TUNING", "all-linear", "lora_only", "all", "none"])

# bitsandbytes quantization state (fuzz/bnb_state_fuzz.cpp): tiny 4-bit layers in transformers'
# layout (plain and double-quantized), an 8-bit layer, and a quantization_config.
def safetensors_bytes(tensors):  # [(name, dtype, shape, bytes)]
    hdr, off, blob = {}, 0, b""
    for name, dt, shape, data in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        blob += data
    h = json.dumps(hdr).encode()
    collect(hdr)
    return struct.pack("<Q", len(h)) + h + blob


nf4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
f32 = lambda xs: struct.pack("<%df" % len(xs), *xs)
words.clear()
for nested in (False, True):
    state = {"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [4, 32]}
    if nested:
        state.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})
    st = json.dumps(state).encode()
    collect(state)
    ts = [("l.weight", "U8", [64, 1], bytes((i * 37) % 256 for i in range(64))),
          ("l.weight.absmax", "U8" if nested else "F32", [2], bytes([3, 200]) if nested else f32([0.5, 1.25])),
          ("l.weight.quant_map", "F32", [16], f32(nf4)),
          ("l.weight.quant_state.bitsandbytes__nf4", "U8", [len(st)], st)]
    if nested:
        ts += [("l.weight.nested_absmax", "F32", [1], f32([0.75])),
               ("l.weight.nested_quant_map", "F32", [256], f32([(i - 128) / 128.0 for i in range(256)]))]
    put("bnb_state", "nf4_nested" if nested else "nf4", safetensors_bytes(ts))
put("bnb_state", "int8", safetensors_bytes([("m.weight", "I8", [2, 4], bytes([1, 255, 7, 128, 0, 3, 127, 9])),
                                            ("m.SCB", "F32", [2], f32([127.0, 2.5])),
                                            ("m.weight_format", "U8", [], bytes([0]))]))
json_seed("bnb_state", "quantization_config", {"quantization_config": {
    "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False, "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8",
    "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False}})
dict_file("bnb_state", ["quant_state.bitsandbytes__nf4", "quant_state.bitsandbytes__fp4", "absmax", "quant_map",
                        "nested_absmax", "nested_quant_map", "SCB", "weight_format", "fp4", "nf4", "U8", "I8"])

# peft serve request bodies: first byte 0 = /v1/completions body, 1 = /v1/chat/completions body,
# 2 = a chat template (rendered for a fixed chat request).
words.clear()
json_seed("serve_request", "completion", {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 8,
                                          "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 3, "stop": ["."],
                                          "n": 1, "stream": True, "stream_options": {"include_usage": True}}, b"\x00")
json_seed("serve_request", "completion_ids", {"model": "stories260K", "prompt": [1, 403, 407], "max_tokens": 4}, b"\x00")
json_seed("serve_request", "chat", {"model": "stories260K", "max_tokens": 8, "stop": "\n", "messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"}]}, b"\x01")
templates = [
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content']"
    " | trim + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] | trim + eos_token }}"
    "{% endif %}{% endfor %}",
    "{% set ns = namespace(first=true) %}{%- for m in messages -%}{% if loop.first and m.role == 'system' %}<<SYS>>"
    "{{ m.content }}<</SYS>>{% set ns.first = false %}{% else %}{{ m.content | upper }}{% endif %}{%- endfor -%}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}{{ raise_exception('x') if messages | length > 9 }}",
]
for i, t in enumerate(templates):
    put("serve_request", "template_%d" % i, b"\x02" + t.encode())
dict_file("serve_request", ["{%", "%}", "{{", "}}", "{#", "#}", "{%-", "-%}", "for", "endfor", "if", "elif", "else",
                            "endif", "set", "namespace", "loop.index", "messages", "content", "role", "prompt",
                            "max_tokens", "temperature", "top_p", "top_k", "stream", "stop", "seed", "model", "n",
                            "stream_options", "include_usage", "add_generation_prompt", "raise_exception", "|"])
