"""Validate a JSON document (or the part at a JSON pointer) against a JSON
Schema with the `jsonschema` package from PyPI; used by xbuild-attest's
tests. Usage: validate_json.py SCHEMA DOCUMENT [POINTER]"""
import json
import sys

from jsonschema import Draft202012Validator, FormatChecker

schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
pointer = sys.argv[3] if len(sys.argv) > 3 else ""
for part in [p for p in pointer.split("/") if p]:
    doc = doc[part]
Draft202012Validator.check_schema(schema)
errors = list(Draft202012Validator(schema, format_checker=FormatChecker()).iter_errors(doc))
for e in errors:
    print("%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(root)", e.message))
sys.exit(1 if errors else 0)
