# Renders every kustomize Component in deploy/components/ onto the DaemonSet of
# every flavour (deploy/, deploy/eks/) as kustomize would apply its inline JSON 6902
# patches (add / replace / remove), and writes each result for the schema check.
# Prints `RENDERED <component> <flavour> <file>` per result, `FAIL <reason>` when a
# patch does not apply (a path that does not exist, a target that matches
# nothing), `CHECK` lines for component-specific expectations.
import copy, os, sys
import yaml

deploy, out_dir = sys.argv[1], sys.argv[2]
flavours = {"deploy": deploy, "deploy/eks": os.path.join(deploy, "eks")}


def load_all(path):
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if isinstance(d, dict)]


def daemonsets(flavour_dir):
    k = load_all(os.path.join(flavour_dir, "kustomization.yaml"))[0]
    found = []
    for entry in k.get("resources") or []:
        path = os.path.join(flavour_dir, entry)
        if os.path.isfile(path):
            found += [d for d in load_all(path) if d.get("kind") == "DaemonSet"]
    return found


def pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    parent = doc
    for p in parts[:-1]:
        parent = parent[int(p)] if isinstance(parent, list) else parent[p]
    return parent, parts[-1]


def apply(doc, ops):
    for op in ops:
        parent, last = pointer(doc, op["path"])
        if op["op"] == "add":
            if isinstance(parent, list):
                parent.append(op["value"]) if last == "-" else parent.insert(int(last), op["value"])
            else:
                parent[last] = op["value"]
        elif op["op"] == "replace":
            if isinstance(parent, list):
                parent[int(last)] = op["value"]
            else:
                if last not in parent:
                    raise KeyError(op["path"])
                parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError("unsupported op " + op["op"])


components_dir = os.path.join(deploy, "components")
for name in sorted(os.listdir(components_dir)):
    k = load_all(os.path.join(components_dir, name, "kustomization.yaml"))[0]
    if k.get("kind") != "Component":
        print("FAIL", name, "is not a kustomize Component")
        continue
    for flavour, fdir in flavours.items():
        for ds in daemonsets(fdir):
            doc = copy.deepcopy(ds)
            for p in k.get("patches") or []:
                t = p.get("target") or {}
                if t.get("kind") not in (None, doc["kind"]) or t.get("name") not in (None, doc["metadata"]["name"]):
                    print("FAIL", name, flavour, "patch target matches no DaemonSet:", t)
                    continue
                try:
                    apply(doc, yaml.safe_load(p["patch"]))
                except (KeyError, IndexError, TypeError, ValueError) as e:
                    print("FAIL", name, flavour, "patch does not apply:", repr(e))
            if doc == ds:
                print("FAIL", name, flavour, "changes nothing")
            out = os.path.join(out_dir, "%s--%s.yaml" % (name, flavour.replace("/", "-")))
            with open(out, "w") as fh:
                yaml.safe_dump(doc, fh)
            print("RENDERED", name, flavour, out)
            if name == "bottlerocket":
                ctx = doc["spec"]["template"]["spec"]["containers"][0].get("securityContext", {})
                se = ctx.get("seLinuxOptions", {})
                ok = se.get("type") == "spc_t" and ctx.get("privileged") is False
                print("CHECK" if ok else "FAIL", name, flavour,
                      "agent container: seLinuxOptions %s, privileged %s" % (se, ctx.get("privileged")))
