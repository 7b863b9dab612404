"""The state cache's size and storage: the estimate against the files a build writes, the refusal of a cache over
``max_bytes`` or the free disk space (before anything is written), int8 storage and its round-trip error on real
states, the dtype in the key, and a build that fails part-way and resumes with only its missing shards."""

from collections import namedtuple

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model

from conftest import image_batch, tiny_mdpd_model, tiny_vit
from mdpd_peft import MDPDConfig, StaleStateCacheError, StateCache, StateCacheTooLargeError, build_state_cache
from mdpd_peft.state_cache import build as build_module
from mdpd_peft.state_cache import estimate_state_cache_size, size, stored_states
from test_state_cache import ragged_dataset

DiskUsage = namedtuple("DiskUsage", "total used free")


def folder_bytes(folder) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


def fake_disk(monkeypatch, free: int, total: int = 1 << 40) -> None:
    """``shutil.disk_usage`` as the size module reads it: a disk with ``free`` bytes free (a system reading, replaced)."""
    monkeypatch.setattr(size, "disk_usage", lambda path: DiskUsage(total, total - free, free))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_the_estimate_is_within_ten_percent_of_the_built_cache(tmp_path, dtype):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    estimate = estimate_state_cache_size(model, data, dtype=dtype, examples_per_shard=5)
    build_state_cache(model, data, tmp_path, dtype=dtype, examples_per_shard=5)
    assert estimate.tokens == sum(sum(mask) for mask in data["attention_mask"])
    assert abs(estimate.total / folder_bytes(tmp_path) - 1) < 0.1


def test_the_estimate_of_images_counts_the_tokens_of_one_backbone_pass(tmp_path):
    """Rows without a mask or ids (images of one size): every row has the tokens of one pass, 16 patches + CLS."""
    model = get_peft_model(tiny_vit(), MDPDConfig(modules_to_save=["classifier"], reduction_factor=4))
    batch = image_batch(batch=6)
    data = Dataset.from_dict({"pixel_values": batch["pixel_values"].tolist(), "labels": batch["labels"].tolist()}).with_format("torch")
    estimate = estimate_state_cache_size(model, data, dtype=torch.float32)
    assert estimate.tokens == 6 * 17
    build_state_cache(model, data, tmp_path, dtype=torch.float32)
    assert abs(estimate.total / folder_bytes(tmp_path) - 1) < 0.1


def test_a_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    estimate = estimate_state_cache_size(model, data, dtype=torch.float32).total
    fake_disk(monkeypatch, free=estimate + (1 << 30) - 1)  # short of the estimate plus the 1 GiB kept free
    folder = tmp_path / "cache"
    with pytest.raises(StateCacheTooLargeError) as refusal:
        build_state_cache(model, data, folder, dtype=torch.float32)
    message = str(refusal.value)
    for fact in (f"{estimate / 1024:,.1f} KiB", "1.0 GiB is kept free", "side_layers=", "dtype=torch.bfloat16", "dtype=torch.int8", "5 stored states"):
        assert fact in message
    assert not folder.exists()
    fake_disk(monkeypatch, free=estimate + (1 << 30))
    assert len(build_state_cache(model, data, folder, dtype=torch.float32)) == len(data)


def test_the_margin_is_five_percent_of_a_small_disk(tmp_path, monkeypatch):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    estimate = estimate_state_cache_size(model, data).total
    total = 10 * estimate  # a tiny disk: 5% of it stays free
    fake_disk(monkeypatch, free=estimate + total // 20 - 1, total=total)
    with pytest.raises(StateCacheTooLargeError, match="is kept free"):
        build_state_cache(model, data, tmp_path)
    fake_disk(monkeypatch, free=estimate + total // 20 + 1, total=total)
    build_state_cache(model, data, tmp_path)


def test_max_bytes_refuses_a_larger_cache_and_takes_only_a_positive_int(tmp_path):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    estimate = estimate_state_cache_size(model, data).total
    with pytest.raises(StateCacheTooLargeError, match=rf"over max_bytes={estimate - 1:,} .*side_layers=.*dtype=torch.int8"):
        build_state_cache(model, data, tmp_path / "small", max_bytes=estimate - 1)
    assert not (tmp_path / "small").exists()
    for bad in (0, -1, 1.5, True, "1000"):
        with pytest.raises(ValueError, match=r"build_state_cache.max_bytes=.* is invalid: max_bytes must be a positive int"):
            build_state_cache(model, data, tmp_path / "bad", max_bytes=bad)
    assert len(build_state_cache(model, data, tmp_path / "fits", max_bytes=estimate)) == len(data)


def test_int8_states_round_trip_within_half_a_step_on_minilm(tmp_path, minilm_path):
    """Real MiniLM states: every value within s / 2 = max|x| / 254 of its token's vector (the absmax bound); the side
    network's logits on the int8 cache close to those on a float32 cache."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2), MDPDConfig(task_type="SEQ_CLS"))
    sentences = ["a gripping, beautifully shot film.", "dull.", "the plot never quite comes together, though the cast tries hard.", "fun"]
    data = Dataset.from_dict({**tokenizer(sentences, truncation=True, max_length=64), "labels": [1, 0, 0, 1]})
    exact = build_state_cache(model, data, tmp_path / "float32", tokenizer=tokenizer, dtype=torch.float32)
    int8 = build_state_cache(model, data, tmp_path / "int8", tokenizer=tokenizer, dtype=torch.int8)
    assert int8.key.dtype == "int8" and int8.num_bytes < exact.num_bytes / 3.5
    for index in range(len(data)):
        stored = int8[index]
        assert stored["hidden_states"].dtype == torch.int8 and stored["hidden_state_scales"].dtype == torch.float32
        states = exact[index]["hidden_states"]  # (n, 7, 384)
        error = (stored_states(stored, torch.float32) - states).abs()
        assert (error <= states.abs().amax(-1, keepdim=True) / 254 * (1 + 1e-5)).all()
    batch, reference = int8.collate([int8[i] for i in range(4)]), exact.collate([exact[i] for i in range(4)])
    assert stored_states(batch, torch.bfloat16).dtype == torch.bfloat16
    model.eval()
    logits, expected = model.base_model.side_logits_on_cached_states(batch), model.base_model.side_logits_on_cached_states(reference)
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()


def test_the_dtype_is_in_the_key_so_int8_and_bfloat16_are_never_mixed(tmp_path):
    model, data = tiny_mdpd_model(), ragged_dataset(rows=6)
    build_state_cache(model, data, tmp_path, dtype=torch.bfloat16)
    with pytest.raises(StaleStateCacheError, match="differs in dtype"):
        build_state_cache(model, data, tmp_path, dtype=torch.int8)
    manifest = (tmp_path / "state_cache.json").read_text()
    (tmp_path / "state_cache.json").write_text(manifest.replace('"bfloat16"', '"int8"'))  # a key that lies about its shards
    with pytest.raises(StaleStateCacheError, match="says dtype=int8, but its shards hold BF16 states without int8 scales"):
        StateCache(tmp_path)
    (tmp_path / "state_cache.json").write_text(manifest)
    cache = build_state_cache(model, data, tmp_path, dtype=torch.int8, overwrite=True)  # replaces the bfloat16 cache
    assert cache.key.dtype == "int8" and "hidden_state_scales" in cache.collate([cache[0], cache[1]])


def test_a_build_that_fails_at_shard_2_resumes_with_only_the_missing_shards(tmp_path, monkeypatch):
    """The rerun writes shards 2 and 3 only, and its disk check asks room for those alone."""
    model, data = tiny_mdpd_model(), ragged_dataset(rows=13)
    expected = build_state_cache(model, data, tmp_path / "whole", dtype=torch.int8, examples_per_shard=4)
    write_shard, written, failed = build_module.write_shard, [], []

    def failing_at_shard_2(path, *args):  # once
        if path.name == "states-00002.safetensors" and not failed:
            failed.append(path.name)
            raise OSError("disk error while writing shard 2")
        written.append(path.name)
        write_shard(path, *args)

    monkeypatch.setattr(build_module, "write_shard", failing_at_shard_2)
    folder = tmp_path / "resumed"
    with pytest.raises(OSError, match="shard 2"):
        build_state_cache(model, data, folder, dtype=torch.int8, examples_per_shard=4)
    assert written == ["states-00000.safetensors", "states-00001.safetensors"] and failed
    estimate = estimate_state_cache_size(model, data, dtype=torch.int8, examples_per_shard=4)
    missing = estimate.shard_bytes(2) + estimate.shard_bytes(3) + size.FOLDER_OVERHEAD
    fake_disk(monkeypatch, free=missing + (1 << 30))  # room for the missing shards, not for the whole cache
    assert missing < estimate.total
    written.clear()
    resumed = build_state_cache(model, data, folder, dtype=torch.int8, examples_per_shard=4)
    assert written == ["states-00002.safetensors", "states-00003.safetensors"]
    assert resumed.key == expected.key and len(resumed) == len(expected)
    for index in range(len(expected)):
        for name in ("hidden_states", "hidden_state_scales"):
            torch.testing.assert_close(resumed[index][name], expected[index][name], rtol=0, atol=0)
