"""The PyTorch models of the course's problem set and of the TF-binding study, in one place:
the reference pipelines (torch_dna.py, torch_tf_binding.py, torch_segmentation.py) train
them, and the parity tests port their weights to the Flax models and compare outputs.

LSTMseq (problem set 2, part 1): nn.LSTM(4, H, batch_first=True, num_layers=1,
bidirectional=True); h_n[-1], the backward direction's final hidden state, into
Linear-Tanh-Linear-Tanh-Linear(1) and a sigmoid: x (B, L, 4) -> probabilities (B,). Flax
twin: `molml_jax.models.lstm.BiLSTMClassifier`.

ResidualBlock, BindingPredictorCNN (the TF-binding study), the study's code unchanged but
for one extension: `length` (default 300, the study's hard-coded value) sets the LayerNorm
shape so that tests can build smaller models. ResidualBlock: conv (no bias), LayerNorm([C,
L]), ReLU, dropout, conv (no bias), LayerNorm([C, L]), add the identity, ReLU.
BindingPredictorCNN: conv 4 -> C (no bias), LayerNorm([C, L]), ReLU, the blocks, a 1x1 conv
C -> 1 with bias, squeeze: x (B, 4, L) channels-first -> scores (B, L). Initialisation as
the study: kaiming_normal_(mode='fan_out', nonlinearity='relu') for every conv with C
outputs (and the initial one), xavier_uniform_ for the final 1x1 conv, biases 0, LayerNorm
weight 1 and bias 0 (torch's default). Flax twin: `molml_jax.models.cnn.BindingPredictorCNN`.

ConvBlock, Down, Up, UNet (problem set 2, part 2): the course provides its U-Net as code
that we do not have; this is the model as the problem set describes it (num_kernel nk = 8,
kernel_size k = 3), written out layer by layer:

    ConvBlock(in, out): Conv2d(in, out, k, padding=k // 2), ReLU, BatchNorm2d(out),
                        Conv2d(out, out, k, padding=k // 2), ReLU, BatchNorm2d(out)
    Down(in, out):      ConvBlock(in, out) -> skip; MaxPool2d(2)(skip)
    Up(in, out):        ConvBlock(in, out), ConvTranspose2d(out, out, 3, stride=2, padding=1,
                        output_padding=1), + skip (added, not concatenated)
    UNet: down1 Down(1, nk), down2 Down(nk, 2nk), down3 Down(2nk, 4nk), down4 Down(4nk, 8nk),
          bridge Conv2d(8nk, 16nk, k, padding=k // 2) (no activation),
          up1 Up(16nk, 8nk) + skip of down4, up2 Up(8nk, 4nk) + down3's, up3 Up(4nk, 2nk)
          + down2's, up4 Up(2nk, nk) + down1's, final_conv Conv2d(nk, 1, 1), sigmoid.
    forward(x (B, 1, H, W)) -> probabilities (B, 1, H, W); H, W multiples of 16.

Default torch initialisation everywhere (the course sets none). Flax twin:
`molml_jax.models.unet.UNet` (channels-last, returning logits).
The `molml_jax.interop` converters port each model's state_dict.
"""

from __future__ import annotations

import torch
from torch import nn

LENGTH = 300  # the TF-binding study's window length, hard-coded in its LayerNorm shapes


# ----- DNA binding sites: bidirectional LSTM (problem set 2, part 1) ----------------------

class LSTMseq(nn.Module):
    """The course's classifier. forward(x (B, L, 4)) -> probabilities (B,).

    `lengths` (B,) is an extension for variable-length batches (zero-padded at the end):
    the LSTM then runs on a packed sequence (enforce_sorted=False), so the backward
    direction starts at each sequence's own last element.
    """

    def __init__(self, hidden_dim: int = 16):
        super().__init__()
        self.lstm = nn.LSTM(4, hidden_dim, batch_first=True, num_layers=1, bidirectional=True)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, 1),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x, lengths=None):
        if lengths is not None:
            x = nn.utils.rnn.pack_padded_sequence(
                x, torch.as_tensor(lengths).cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(x)  # h_n (2, B, H): [forward, backward] final states
        return self.sigmoid(self.mlp(h_n[-1])).squeeze(-1)


# ----- TF binding: residual 1-D CNN (the TF-binding study) --------------------------------

class ResidualBlock(nn.Module):
    """Residual Block with LayerNorm."""

    def __init__(self, num_channels, kernel_size, dropout_rate, length: int = LENGTH):
        super().__init__()
        self.conv1 = nn.Conv1d(num_channels, num_channels, kernel_size,
                               stride=1, padding=kernel_size // 2, bias=False)
        self.norm1 = nn.LayerNorm([num_channels, length])  # Normalize across channels and length
        self.relu1 = nn.ReLU()
        self.dropout = nn.Dropout(dropout_rate)
        self.conv2 = nn.Conv1d(num_channels, num_channels, kernel_size,
                               stride=1, padding=kernel_size // 2, bias=False)
        self.norm2 = nn.LayerNorm([num_channels, length])
        self.relu2 = nn.ReLU()

        # Initialize weights
        self._initialize_weights()

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.norm1(out)
        out = self.relu1(out)
        out = self.dropout(out)
        out = self.conv2(out)
        out = self.norm2(out)
        out += identity
        out = self.relu2(out)
        return out


class BindingPredictorCNN(nn.Module):
    """forward(x (B, 4, L) one-hot, channels-first) -> scores (B, L)."""

    def __init__(self, num_channels=32, num_blocks=3, kernel_size=3, dropout_rate=0.2,
                 length: int = LENGTH):
        super().__init__()
        self.initial_conv = nn.Conv1d(4, num_channels, kernel_size,
                                      stride=1, padding=kernel_size // 2, bias=False)
        # Assuming input sequence length is 300, adjust if different
        self.initial_norm = nn.LayerNorm([num_channels, length])
        self.initial_relu = nn.ReLU()

        self.res_blocks = nn.Sequential(
            *[ResidualBlock(num_channels, kernel_size, dropout_rate, length) for _ in range(num_blocks)]
        )

        self.final_conv = nn.Conv1d(num_channels, 1, kernel_size=1, stride=1, padding=0, bias=True)

        # Initialize weights
        self._initialize_weights()

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                # He init for initial/block convs
                if m.out_channels == self.initial_conv.out_channels or m.in_channels == 4:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                # Default init might be okay for final 1x1 conv, or use Xavier
                elif m.out_channels == 1:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.initial_conv(x)
        x = self.initial_norm(x)
        x = self.initial_relu(x)
        x = self.res_blocks(x)
        x = self.final_conv(x)
        x = x.squeeze(1)  # Remove channel dimension -> (Batch, L)
        return x


# ----- nucleus segmentation: U-Net (problem set 2, part 2) ---------------------------------

class ConvBlock(nn.Module):
    """conv1, ReLU, bn1, conv2, ReLU, bn2: (B, in, H, W) -> (B, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu1 = nn.ReLU()
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.relu2 = nn.ReLU()
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = self.bn1(self.relu1(self.conv1(x)))
        return self.bn2(self.relu2(self.conv2(x)))


class Down(nn.Module):
    """forward(x (B, in, H, W)) -> (pooled (B, out, H/2, W/2), skip (B, out, H, W))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv_block = ConvBlock(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        skip = self.conv_block(x)
        return self.pool(skip), skip


class Up(nn.Module):
    """forward(x (B, in, H, W), skip (B, out, 2H, 2W)) -> (B, out, 2H, 2W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.conv_block = ConvBlock(in_channels, out_channels, kernel_size)
        self.up = nn.ConvTranspose2d(out_channels, out_channels, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x, skip):
        return self.up(self.conv_block(x)) + skip


class UNet(nn.Module):
    """forward(x (B, 1, H, W)) -> sigmoid probabilities (B, 1, H, W); layers in the module docstring."""

    def __init__(self, num_kernel: int = 8, kernel_size: int = 3):
        super().__init__()
        nk, k = num_kernel, kernel_size
        self.down1 = Down(1, nk, k)
        self.down2 = Down(nk, 2 * nk, k)
        self.down3 = Down(2 * nk, 4 * nk, k)
        self.down4 = Down(4 * nk, 8 * nk, k)
        self.bridge = nn.Conv2d(8 * nk, 16 * nk, k, padding=k // 2)
        self.up1 = Up(16 * nk, 8 * nk, k)
        self.up2 = Up(8 * nk, 4 * nk, k)
        self.up3 = Up(4 * nk, 2 * nk, k)
        self.up4 = Up(2 * nk, nk, k)
        self.final_conv = nn.Conv2d(nk, 1, 1)

    def forward(self, x):
        x, skip1 = self.down1(x)
        x, skip2 = self.down2(x)
        x, skip3 = self.down3(x)
        x, skip4 = self.down4(x)
        x = self.bridge(x)
        x = self.up1(x, skip4)
        x = self.up2(x, skip3)
        x = self.up3(x, skip2)
        x = self.up4(x, skip1)
        return torch.sigmoid(self.final_conv(x))
