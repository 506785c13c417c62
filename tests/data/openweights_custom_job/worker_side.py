"""The job's side of client_side.py: reads its parameters from the command line, logs with ow.run.log."""

import json
import sys

from openweights import OpenWeights

params = json.loads(sys.argv[1])
ow = OpenWeights()
ow.run.log({"text": "multiplying"})
product = params["x"] * params["y"]
ow.run.log({"product": product})
print(f"{params['x']} * {params['y']} = {product}")
