"""Class names of output units: ImageNet's from torchvision's metadata (offline), the
demo networks' shapes, a stimulus file's label/class columns."""
from dnnbrain.dnn.classes import class_names, class_of, stimulus_classes, unit_label
from dnnbrain.dnn.models import AlexNet, DNN


def test_named_networks_carry_imagenet_names_offline():
    dnn = AlexNet(pretrained=False)  # no weights, no download: the names are metadata
    assert len(dnn.classes) == 1000 and dnn.classes[539] == "doormat"
    assert unit_label(dnn, "fc3", 540) == "fc3 unit 540 (doormat)"
    assert unit_label(dnn, "classifier.6", 541, "predicted") == \
        "fc3 unit 541 (drilling platform), predicted".replace("fc3", "classifier.6")
    assert unit_label(dnn, "fc2", 540) == "fc2 unit 540"  # not the output layer: no class


def test_demo_names_and_stimulus_labels(shapenet, demo_stim):
    assert class_names(shapenet)[4] == "star"
    assert stimulus_classes(demo_stim) == {1: "circle", 2: "square", 3: "triangle",
                                           4: "star"}
    import torch
    own = DNN(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)))
    assert own.classes is None and class_names(own) is None
    assert class_of(own, "1", 3, stim=demo_stim) == "triangle"  # from the stimulus file
    assert class_of(own, "1", ("cls", 3), stim=demo_stim) is None
