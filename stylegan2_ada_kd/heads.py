"""Projection heads that map discriminator features into a teacher's embedding space.

KD-DLGAN distils CLIP image embeddings into D through a small head on D's epilogue FC output
(METHOD.md 1 and A12): two linear layers, C -> 1024 -> E, with no activation between them, as the
released BigGAN code's `linear_cls_1` / `linear_cls_2` (without spectral norm for StyleGAN2). The head
belongs to the KD plugin's module tree, so D's optimizer trains it (through the loss's
`d_parameters`) and its weights are saved with the snapshot's `plugin_states` and the training state.
"""

import torch


class ProjectionHead(torch.nn.Module):
    """s(h) = W2 (W1 h + b1) + b2: D features [N, C] -> student embeddings [N, E]."""

    def __init__(
        self,
        in_features=512,        # C: width of D's epilogue FC output (512 in the real configs)
        hidden_features=1024,   # width of the hidden layer
        out_features=512,       # E: the teacher's embedding dim (512 for ViT-B-32)
    ):
        super().__init__()
        self.in_features = int(in_features)
        self.hidden_features = int(hidden_features)
        self.out_features = int(out_features)
        self.fc1 = torch.nn.Linear(self.in_features, self.hidden_features)
        self.fc2 = torch.nn.Linear(self.hidden_features, self.out_features)

    def forward(self, feats):
        """feats [N, C] (any float dtype) -> [N, E] float32 (KD arithmetic stays in fp32)."""
        if feats.ndim != 2 or feats.shape[1] != self.in_features:
            raise ValueError(f"ProjectionHead: expected features [N, {self.in_features}], got {list(feats.shape)}; "
                             "build the head with D's epilogue FC width")
        # No nonlinearity between the layers, as in the released code.
        return self.fc2(self.fc1(feats.float()))

    def extra_repr(self):
        return f"{self.in_features} -> {self.hidden_features} -> {self.out_features}"
