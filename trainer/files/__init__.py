"""Files (OpenAI's Files API): training files (purpose "fine-tune") validated, stored and
read back as examples.

- parsing: the training file formats (chat, preference, prompts, rated), checked line by
  line with the line number in every error;
- store: the store itself (`save_file`, `get_file`, `list_files`, `file_content`,
  `delete_file`), which serves every purpose: batch input and output files
  (gateway.batches) are kept the same way; tenant-scoped, blob before row;
- upload: a training file's upload and its examples read back.
"""

from trainer.files.parsing import MAX_FILE_LINES, Kind, ParsedFile, parse_jsonl
from trainer.files.store import FileInfo, delete_file, file_content, get_file, list_files, save_file
from trainer.files.upload import MAX_FILE_BYTES, PURPOSE, check_size, read_examples, upload_file

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_FILE_LINES",
    "PURPOSE",
    "FileInfo",
    "Kind",
    "ParsedFile",
    "check_size",
    "delete_file",
    "file_content",
    "get_file",
    "list_files",
    "parse_jsonl",
    "read_examples",
    "save_file",
    "upload_file",
]
