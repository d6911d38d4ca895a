"""A SageMaker inference-toolkit style module: model_fn / input_fn / predict_fn / output_fn."""
import json


def model_fn(model_dir):
    return {"scale": 3, "model_dir": model_dir}


def input_fn(body, content_type):
    assert content_type.startswith("application/json")
    return json.loads(body)["values"]


def predict_fn(data, model):
    return [v * model["scale"] for v in data]


def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction}), "application/json"
