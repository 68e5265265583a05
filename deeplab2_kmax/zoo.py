r"""Published checkpoints by name: download once, check, convert, cache.

  python -m deeplab2_kmax.tools.fetch --name=kmax_convnext_large_coco_train
  # anywhere a checkpoint path is accepted: zoo:kmax_convnext_large_coco_train

Names and what they are: zoo_registry.py. `NAME.tar.gz` comes from
DeepLab2's checkpoint folder, or from `$DEEPLAB2_KMAX_ZOO_URL/NAME.tar.gz`
when that is set (a mirror; the tests' loopback server). Files go to
`$DEEPLAB2_KMAX_CACHE` (default `~/.cache/deeplab2_kmax`):

  downloads/NAME.tar.gz.part   a download in progress; the next fetch
                               resumes it (HTTP Range)
  downloads/NAME.tar.gz        a complete download (its size as the server
                               announced it), removed once unpacked
  NAME/ckpt-<step>.*           the checkpoint, ours: a kMaX model converted
                               once from DeepLab2's keys (ImageNet backbones
                               stay in DeepLab2's layout, which
                               initial_checkpoint and pretrained_weights read)

An archive must hold one folder with one `ckpt-<step>.index` and its data
files (a `checkpoint` file is not needed). A truncated or corrupt archive,
or one with other contents, is an error naming the file; it is deleted so
that the next fetch downloads it again. Unpacking and converting happen in a
hidden staging folder renamed into place at the end, so the cache never
holds a half-written checkpoint.
"""
import http.client
import os
import pathlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request

from deeplab2_kmax import zoo_registry

PREFIX = 'zoo:'
_CHUNK = 1 << 20
_TIMEOUT = 60  # seconds without data before a download gives up


class ZooError(ValueError):
  """A zoo name, download or archive that cannot be used."""


def cache_dir():
  return pathlib.Path(os.environ.get('DEEPLAB2_KMAX_CACHE') or
                      pathlib.Path.home() / '.cache' / 'deeplab2_kmax')


def archive_url(name):
  base = os.environ.get('DEEPLAB2_KMAX_ZOO_URL') or (
      zoo_registry.DEEPLAB2_CHECKPOINT_URL)
  return f'{base.rstrip("/")}/{name}.tar.gz'


def entry(name):
  """The registry entry of `name`; ZooError listing the names if unknown."""
  if name not in zoo_registry.REGISTRY:
    raise ZooError(f'unknown zoo checkpoint {name!r}; expected one of: '
                   f'{", ".join(sorted(zoo_registry.REGISTRY))}')
  return zoo_registry.REGISTRY[name]


def is_zoo_path(path):
  return isinstance(path, str) and path.startswith(PREFIX)


def resolve(path, *, progress=True):
  """`zoo:NAME` -> the local checkpoint prefix (fetched if needed); any
  other path is returned as it is."""
  if not is_zoo_path(path):
    return path
  return str(fetch(path[len(PREFIX):], progress=progress))


def cached_checkpoint(name):
  """The cached checkpoint prefix of `name`, or None."""
  folder = cache_dir() / name
  indexes = sorted(folder.glob('ckpt-*.index')) if folder.is_dir() else []
  return indexes[0].with_suffix('') if len(indexes) == 1 else None


def fetch(name, *, progress=True):
  """Downloads, checks, unpacks and (kMaX models) converts `name` once;
  returns the local checkpoint prefix."""
  item = entry(name)
  cached = cached_checkpoint(name)
  if cached is not None:
    return cached
  downloads = cache_dir() / 'downloads'
  downloads.mkdir(parents=True, exist_ok=True)
  archive = downloads / f'{name}.tar.gz'
  if not archive.exists():
    download(archive_url(name), archive, progress=progress)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f'.{name}-',
                                          dir=cache_dir()))
  try:
    source = unpack(archive, staging / 'archive')
    final = staging / name
    final.mkdir()
    if item.kind == zoo_registry.KMAX:
      # Imported here: converting builds a model (TensorFlow, Keras).
      from deeplab2_kmax.tools import convert_deeplab2_checkpoint  # pylint: disable=import-outside-toplevel
      repository = pathlib.Path(__file__).resolve().parents[1]
      convert_deeplab2_checkpoint.convert(
          str(repository / item.config), str(source),
          str(final / source.name))
    else:
      for path in source.parent.glob(source.name + '.*'):
        shutil.move(str(path), final / path.name)
    target = cache_dir() / name
    if target.exists():  # an unusable leftover (no single checkpoint)
      shutil.rmtree(target)
    os.replace(final, target)
  except Exception:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  shutil.rmtree(staging, ignore_errors=True)
  archive.unlink()
  return cached_checkpoint(name)


def download(url, path, *, progress=True):
  """Downloads `url` to `path`, resuming `path`.part; the complete file
  appears at `path` only when its size is the announced one."""
  # Imported here: tqdm only when downloading.
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  partial = path.with_name(path.name + '.part')
  have = partial.stat().st_size if partial.exists() else 0
  request = urllib.request.Request(url)
  if have:
    request.add_header('Range', f'bytes={have}-')
  try:
    response = urllib.request.urlopen(request, timeout=_TIMEOUT)  # pylint: disable=consider-using-with
  except urllib.error.HTTPError as e:
    if e.code == 416 and have:  # the partial file is already complete
      os.replace(partial, path)
      return
    raise ZooError(f'{url}: HTTP {e.code} {e.reason}') from None
  except (urllib.error.URLError, OSError) as e:
    raise ZooError(f'{url}: cannot download: {getattr(e, "reason", e)}') from (
        None)
  with response:
    if have and response.status != 206:  # the server ignored the range
      have = 0
    length = response.headers.get('Content-Length')
    total = have + int(length) if length is not None else None
    mode = 'ab' if have else 'wb'
    bar = tqdm(total=total, initial=have, unit='B', unit_scale=True,
               unit_divisor=1024, desc=path.name, disable=not progress)
    try:
      with open(partial, mode) as f:
        while True:
          chunk = response.read(_CHUNK)
          if not chunk:
            break
          f.write(chunk)
          bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as e:
      raise ZooError(f'{url}: the download broke off after '
                     f'{partial.stat().st_size} bytes ({e}); fetch again to '
                     'resume it') from None
    finally:
      bar.close()
  size = partial.stat().st_size
  if total is not None and size != total:
    raise ZooError(f'{url}: the download broke off at {size} of {total} '
                   'bytes; fetch again to resume it')
  os.replace(partial, path)


def unpack(archive, output):
  """Unpacks `archive` into `output`; returns the checkpoint prefix.

  A corrupt or truncated archive, or one that is not one folder with one
  ckpt-<step>.index and its data files, is deleted and a ZooError.
  """
  def refuse(reason):
    archive.unlink(missing_ok=True)
    shutil.rmtree(output, ignore_errors=True)
    return ZooError(f'{archive}: {reason}; the file was deleted, fetch '
                    'again to download it anew')

  try:
    with tarfile.open(archive, 'r:gz') as tar:
      members = tar.getmembers()
      files = [m for m in members if m.isfile()]
      tops = {pathlib.PurePosixPath(m.name).parts[0] for m in members}
      if len(tops) != 1 or not all(m.isfile() or m.isdir() for m in members):
        raise refuse(f'expected one folder of regular files; found '
                     f'{sorted(tops)[:5]}')
      indexes = [m for m in files if m.name.endswith('.index') and
                 pathlib.PurePosixPath(m.name).name.startswith('ckpt-')]
      if len(indexes) != 1:
        raise refuse(f'expected one ckpt-<step>.index; found '
                     f'{[m.name for m in indexes]}')
      # 'data' refuses absolute paths, links and anything leaving `output`.
      tar.extractall(output, members=members, filter='data')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise refuse(f'not a complete .tar.gz archive ({type(e).__name__}: '
                 f'{e})') from None
  prefix = output / indexes[0].name[:-len('.index')]
  if not list(prefix.parent.glob(prefix.name + '.data-*')):
    raise refuse(f'{indexes[0].name} has no data files beside it')
  return prefix
