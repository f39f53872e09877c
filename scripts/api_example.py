"""The worked example of docs/api.md, cell by cell: python scripts/api_example.py RUN OUT_DIR
(a Fashion-MNIST run; prints what each cell prints and writes OUT_DIR/api_example.png)."""
import sys
import time
RUN = sys.argv[1]
OUT = sys.argv[2]
# --- cell 1
import torch
import vae_train

m = vae_train.load(RUN, device="cpu")
print(m)
print(m.input_shape, m.num_classes, m.classes[:3], m.binarize)
# --- cell 2
x, y = next(m.batches("test", batch_size=1000))
enc = m.encode(x)
print({k: tuple(v.shape) for k, v in enc.items()})
# --- cell 3
t = time.perf_counter()
torch.manual_seed(0)
ll = m.log_prob(x, k=1000)
per = m.elbo(x)
print(f"NLL {-ll.mean():.2f} nats, -ELBO {per['neg_elbo'].mean():.2f} nats "
      f"({time.perf_counter() - t:.1f} s for 1000 images)")
# --- cell 4
for c in range(10):
    sel = y == c
    print(f"{m.classes[c]:<12} NLL {-ll[sel].mean():7.2f}   recon error {per['recon_error'][sel].mean():6.2f}")
# --- cell 5
from torchvision.utils import save_image
row = m.interpolate(x[0], x[1], steps=10)
samples = m.sample(10, seed=0)
recon = m.reconstruct(x[:10])
save_image(torch.cat([x[:10], recon, samples, row]), OUT + "/api_example.png", nrow=10, pad_value=0.5)
# --- cell 6
import numpy as np
from PIL import Image
img = np.asarray(Image.open(OUT + "/api_example.png").convert("L"))   # any uint8 picture...
mine = x[:4].mul(255).byte().numpy()                                 # ...as (B, 1, 28, 28) uint8
print(m.encode(mine)["mean"].shape, m.reconstruct(mine[0]).shape)
