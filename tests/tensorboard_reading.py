"""What a run's TensorBoard event files hold, read through TensorBoard's own reader (as its tabs read them)."""

from pathlib import Path

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util


def events_of(run_dir: Path) -> EventAccumulator:
    return EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0}).Reload()


def hparams_session(run_dir: Path) -> dict:
    """hyperparameter -> value of the run's HParams session, as the HParams tab reads it (a tag's first)."""
    content = events_of(run_dir).PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def hparams_table(logdir: Path) -> tuple[dict[str, bool], set[str]]:
    """(hyperparameter -> whether it differs between runs, metric tags): the HParams tab's columns over
    every run under ``logdir``, built by TensorBoard's own HParams plugin code as its GetExperiment call."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    tb_context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
    experiment = get_experiment.Handler(context.RequestContext(), backend_context.Context(tb_context), "",
                                        api_pb2.GetExperimentRequest()).run()
    return ({info.name: info.differs for info in experiment.hparam_infos},
            {info.name.tag for info in experiment.metric_infos})


def text_cards(run_dir: Path) -> dict[str, str]:
    """tag -> the Markdown of its latest text card (the Text tab's)."""
    events = events_of(run_dir)
    tags = [tag for tag in events.Tags()["tensors"]
            if events.SummaryMetadata(tag).plugin_data.plugin_name == text_metadata.PLUGIN_NAME]
    return {tag.removesuffix("/text_summary"): tensor_util.make_ndarray(events.Tensors(tag)[-1].tensor_proto).item().decode()
            for tag in tags}


def text_series(run_dir: Path, tag: str) -> list[tuple[int, str]]:
    """(step, Markdown) of every text summary under ``tag``, in step order (the Text tab's slider)."""
    events = events_of(run_dir)
    return [(event.step, tensor_util.make_ndarray(event.tensor_proto).item().decode())
            for event in events.Tensors(f"{tag}/text_summary")]


def hparams_session_count(run_dir: Path) -> int:
    """How many HParams sessions the run folder's event files start, read event by event (the accumulator
    keeps a tag's first metadata only, as the HParams tab does)."""
    return sum(value.tag == hparams_metadata.SESSION_START_INFO_TAG
               for path in sorted(run_dir.glob("*tfevents*"))
               for event in EventFileLoader(str(path)).Load() for value in event.summary.value)
