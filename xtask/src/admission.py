"""Evaluate deploy/'s ValidatingAdmissionPolicies (their CEL) against example
objects, as the API server would: each case names a policy, a kind and whether the
object must be admitted. Prints one line per case: OK/FAIL, and exits non-zero on
any failure. argv: cases file, then the manifest files."""
import sys

import celpy
import yaml
from celpy import celtypes

cases_file, files = sys.argv[1], sys.argv[2:]
policies = {}
for f in files:
    with open(f) as fh:
        for d in yaml.safe_load_all(fh):
            if d and d.get("kind") == "ValidatingAdmissionPolicy":
                name = d["metadata"]["name"]
                # Overlays (deploy/eks/) carry their own copy: one name, one policy,
                # so the cases below test every copy.
                if name in policies and policies[name][1] != d["spec"]:
                    raise SystemExit("FAIL policy %s differs between %s and %s" % (name, policies[name][0], f))
                policies[name] = (f, d["spec"])

env = celpy.Environment()


def admitted(spec, kind, obj):
    act = {
        "object": celpy.json_to_cel(obj),
        "request": celpy.json_to_cel({"kind": {"kind": kind}}),
    }
    variables = {}
    for v in spec.get("variables", []):
        variables[celtypes.StringType(v["name"])] = env.program(env.compile(v["expression"])).evaluate(act)
    act["variables"] = celtypes.MapType(variables)
    failed = []
    for val in spec["validations"]:
        result = env.program(env.compile(val["expression"])).evaluate(act)
        if not isinstance(result, celtypes.BoolType):
            raise SystemExit("policy expression did not evaluate to a bool: %r (%s)" % (result, val["expression"]))
        if not bool(result):
            failed.append(val.get("message", val["expression"]).strip())
    return not failed, failed


bad = 0
with open(cases_file) as fh:
    cases = yaml.safe_load(fh)
seen = set()
for case in cases:
    spec = policies.get(case["policy"], (None, None))[1]
    if spec is None:
        print("FAIL %s: no policy %s in deploy/" % (case["name"], case["policy"]))
        bad += 1
        continue
    seen.add(case["policy"])
    ok, why = admitted(spec, case["kind"], case["object"])
    if ok != case["admitted"]:
        bad += 1
        print("FAIL %s: admitted=%s, expected %s %s" % (case["name"], ok, case["admitted"], why))
    else:
        print("OK %s" % case["name"])
for name in sorted(set(policies) - seen):
    bad += 1
    print("FAIL policy %s has no cases in %s" % (name, cases_file))
sys.exit(1 if bad else 0)
