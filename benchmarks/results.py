"""Where the benchmark and compile-check scripts leave their results: <out>/<name>.json (the
rows and run facts) and <out>/<name>.md (the printed table)."""
import json
import os


def write(out_dir, name, data, table):
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, name + ".json"), "w") as f:
    json.dump(data, f, indent=1)
  with open(os.path.join(out_dir, name + ".md"), "w") as f:
    f.write(table if table.endswith("\n") else table + "\n")
