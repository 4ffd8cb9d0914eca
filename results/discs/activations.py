"""Where a disc lives in the network: for every instance norm of a shipped style network, how much
of each channel's variance (the statistic the norm divides by) comes from the pixels under the
disc, against a control region of the same shape elsewhere in the same image.

  .venv/bin/python results/discs/activations.py results/discs/activations.json

Photo: the held-out training photo with the largest disc area under starry_night (results/discs/
shipped.json), 512 px on its longer side. A layer's mask is the output's disc mask at the layer's
stride, reflected into its margin as the network's input padding is.
"""
import json
import sys

import jax.numpy as jnp
import numpy as np

from fastnst import data, discs, images, modelfile

PAIRS = [("conv_in", "norm_in"), ("down0", "norm_down0"), ("down1", "norm_down1")]
PAIRS += [(f"res{k}/conv{i}", f"res{k}/norm{i}") for k in range(5) for i in range(2)]
PAIRS += [("up0", "norm_up0"), ("up1", "norm_up1")]


def layer_mask(mask, shape):
    """The HxW mask at a layer of size `shape` (stride H / inner size, margin reflected)."""
    h, w = mask.shape
    lh, lw = shape
    s = max(1, round(h / lh)) if lh <= h else 1
    small = mask[::s, ::s] if s > 1 else mask
    mh, mw = (lh - small.shape[0]) // 2, (lw - small.shape[1]) // 2
    if mh > 0 or mw > 0:
        small = np.pad(small, ((mh, lh - small.shape[0] - mh), (mw, lw - small.shape[1] - mw)), mode="reflect")
    return small[:lh, :lw]


def stats(a, m):
    """Per channel: share of the centred sum of squares under `m`; std over all / outside `m`."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    m = m.reshape(-1)
    dev2 = (a - a.mean(0)) ** 2
    share = dev2[m].sum(0) / np.maximum(dev2.sum(0), 1e-12)
    ratio = a.std(0) / np.maximum(a[~m].std(0), 1e-12)
    return share, ratio


def main(out_path):
    shared = data.shared_data()
    held = data.FolderSource(shared / "train", holdout=10).heldout
    model = modelfile.load_model("starry_night")
    best = None
    for f in held:
        photo = images.resize_max_side(images.load_image(f), 512)
        h, w = (d - d % 4 for d in photo.shape[:2])
        photo = photo[:h, :w]
        y, st = model.net.apply(model.variables, jnp.asarray(photo[None]), capture_intermediates=True,
                                mutable=["intermediates"])
        out = np.clip(np.asarray(y[0]), 0, 255)
        mask = discs.disc_mask(out, photo)
        if best is None or mask.mean() > best[3].mean():
            best = (f, photo, st["intermediates"], mask, out)
    f, photo, inter, mask, out = best
    # control: the mask moved by half the image (onto other content, off the disc)
    ctrl = np.roll(mask, (mask.shape[0] // 2, mask.shape[1] // 2), axis=(0, 1))
    assert not (ctrl & mask).any()
    rows = []
    for conv, _ in PAIRS:
        node = inter
        for part in conv.split("/"):
            node = node[part]
        a = np.asarray(node["__call__"][0][0])
        row = {"layer": conv, "shape": list(a.shape)}
        for name, m in (("disc", mask), ("control", ctrl)):
            lm = layer_mask(m, a.shape[:2])
            share, ratio = stats(a, lm)
            top = int(np.argmax(share))
            row[name] = {"area": float(lm.mean()), "max_share": float(share.max()), "top_channel": top,
                         "channels_share_over_25pct": int((share > 0.25).sum()),
                         "channels_share_over_10x_area": int((share > 10 * max(lm.mean(), 1e-9)).sum()),
                         "max_std_ratio": float(ratio.max())}
        rows.append(row)
        d, c = row["disc"], row["control"]
        print(f"{conv:12s} {str(a.shape):16s} area {d['area']:.4f} | disc: max share {d['max_share']:.3f} "
              f"(ch {d['top_channel']}), >25%: {d['channels_share_over_25pct']:3d}, >10x area: "
              f"{d['channels_share_over_10x_area']:3d}, std ratio {d['max_std_ratio']:.2f} | control: max share "
              f"{c['max_share']:.3f}, >10x area: {c['channels_share_over_10x_area']:3d}, "
              f"std ratio {c['max_std_ratio']:.2f}", flush=True)
    images.save_image(out_path.replace(".json", "_photo.jpg"),
                      images.side_by_side([photo, np.where(mask[..., None], [255, 0, 0], out).astype(np.float32)],
                                          height=256))
    json.dump({"photo": str(f), "disc_area": float(mask.mean()), "rows": rows}, open(out_path, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
