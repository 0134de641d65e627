//! Lines of a file that may still be growing: [`LineReader`] hands out each complete line
//! with the byte offset where it starts, and never holds more than the line limit (plus
//! one read) in memory.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes asked of the file per read.
const READ_BYTES: usize = 64 << 10;

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<'a> {
    /// A complete line (its `\n` not included), starting at byte `position`.
    Line { position: u64, bytes: &'a [u8] },
    /// A line longer than the limit, starting at `position`, `length` bytes long (its
    /// `\n` not counted): its bytes were dropped as they were read.
    TooLong { position: u64, length: u64 },
    /// No complete line yet: the file ends in an unfinished line or at a line's end.
    End,
}

/// Reads lines from `position` on through positioned reads (the file's own offset is not
/// used, so the reader can be moved back to any line start).
pub(crate) struct LineReader {
    file: File,
    max_line: usize,
    /// Read but not yet handed out: `buf[head..]` holds the file's bytes from `position`.
    buf: Vec<u8>,
    head: usize,
    /// How many bytes from `head` on are known to hold no `\n`.
    scanned: usize,
    /// The file position of `buf[head]`: where the next line starts, unless a line over the
    /// limit is being dropped.
    position: u64,
    /// Where the next read starts.
    read_at: u64,
    /// The start of a line over the limit whose end is not found yet.
    dropping: Option<u64>,
}

impl LineReader {
    /// A reader of `file` from byte `position` (a line start), for lines of at most
    /// `max_line` bytes.
    pub(crate) fn new(file: File, position: u64, max_line: usize) -> LineReader {
        LineReader {
            file,
            max_line,
            buf: Vec::new(),
            head: 0,
            scanned: 0,
            position,
            read_at: position,
            dropping: None,
        }
    }

    /// The open file.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Where the next line starts: every line before it has been handed out.
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// How far the file has been read.
    pub(crate) fn read_to(&self) -> u64 {
        self.read_at
    }

    /// Moves back (or on) to `position`, a line start.
    pub(crate) fn seek(&mut self, position: u64) {
        self.buf.clear();
        self.head = 0;
        self.scanned = 0;
        self.position = position;
        self.read_at = position;
        self.dropping = None;
    }

    /// The next complete line, reading the file as needed.
    pub(crate) fn next_line(&mut self) -> std::io::Result<Next<'_>> {
        loop {
            let from = self.head + self.scanned;
            if let Some(i) = self.buf[from..].iter().position(|&b| b == b'\n') {
                let end = from + i;
                let line_start = self.position;
                let line_end = self.position + (end - self.head) as u64;
                let range = self.head..end;
                self.head = end + 1;
                self.scanned = 0;
                self.position = line_end + 1;
                let too_long = end - range.start > self.max_line;
                return Ok(match self.dropping.take() {
                    Some(start) => Next::TooLong {
                        position: start,
                        length: line_end - start,
                    },
                    None if too_long => Next::TooLong {
                        position: line_start,
                        length: line_end - line_start,
                    },
                    None => Next::Line {
                        position: line_start,
                        bytes: &self.buf[range],
                    },
                });
            }
            self.scanned = self.buf.len() - self.head;
            if self.dropping.is_none() && self.scanned > self.max_line {
                self.dropping = Some(self.position);
            }
            if self.dropping.is_some() {
                // Drop what is read of the long line: memory stays bounded.
                self.position += self.scanned as u64;
                self.head = self.buf.len();
                self.scanned = 0;
            }
            if !self.fill()? {
                return Ok(Next::End);
            }
        }
    }

    /// The unterminated rest of a file that will not grow any more, as its last line (or
    /// `End` if it ended in `\n`). Call it after [`LineReader::next_line`] returned `End`:
    /// only what that read is taken.
    pub(crate) fn last_line(&mut self) -> Next<'_> {
        let rest = self.buf.len() - self.head;
        let line_start = self.position;
        let range = self.head..self.buf.len();
        self.head = self.buf.len();
        self.scanned = 0;
        self.position += rest as u64;
        match self.dropping.take() {
            Some(start) => Next::TooLong {
                position: start,
                length: self.position - start,
            },
            None if rest > self.max_line => Next::TooLong {
                position: line_start,
                length: rest as u64,
            },
            None if rest > 0 => Next::Line {
                position: line_start,
                bytes: &self.buf[range],
            },
            None => Next::End,
        }
    }

    /// Reads more of the file after what `buf` holds; false at the end of the file.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.head > 0 {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_BYTES, 0);
        let read = loop {
            match self.file.read_at(&mut self.buf[len..], self.read_at) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(len);
                return Err(e);
            }
        };
        self.buf.truncate(len + n);
        self.read_at += n as u64;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn lines(reader: &mut LineReader) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        loop {
            match reader.next_line().unwrap() {
                Next::Line { position, bytes } => {
                    out.push((position, String::from_utf8_lossy(bytes).into_owned()));
                }
                Next::TooLong { position, length } => {
                    out.push((position, format!("<{length} bytes>")));
                }
                Next::End => return out,
            }
        }
    }

    #[test]
    fn hands_out_complete_lines_with_their_offsets() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"a\n\nbc\nunfinished").unwrap();
        let mut reader = LineReader::new(file.try_clone().unwrap(), 0, 100);
        let got = lines(&mut reader);
        assert_eq!(got, [(0, "a".into()), (2, String::new()), (3, "bc".into())]);
        assert_eq!(reader.position(), 6);
        file.write_all(b" now\nnext\n").unwrap();
        assert_eq!(
            lines(&mut reader),
            [(6, "unfinished now".into()), (21, "next".into())]
        );
        reader.seek(3);
        assert_eq!(lines(&mut reader)[0], (3, "bc".into()));
    }

    #[test]
    fn drops_lines_over_the_limit_and_goes_on() {
        let mut file = tempfile::tempfile().unwrap();
        let long = "x".repeat(200_000);
        write!(file, "ok\n{long}\n1234\n12345\nend").unwrap();
        let mut reader = LineReader::new(file, 0, 4);
        let got = lines(&mut reader);
        assert_eq!(
            got,
            [
                (0, "ok".into()),
                (3, "<200000 bytes>".into()),
                (200_004, "1234".into()),
                (200_009, "<5 bytes>".into()),
            ]
        );
        assert_eq!(
            reader.last_line(),
            Next::Line {
                position: 200_015,
                bytes: b"end"
            }
        );
        assert_eq!(reader.last_line(), Next::End);
        assert_eq!(reader.position(), 200_018);
    }
}
