//! Where the parts of an HTTP/1 head parsed in place lie in their buffer,
//! so that the head can be taken off the buffer whole and each part
//! sliced from it without a copy (the request heads the front's own server
//! reads, the response heads the own upstream client reads).

use std::ops::Range;

use bytes::Bytes;

/// A part's place in its head: where it starts, and its length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Place {
    start: u32,
    len: u32,
}

/// Where one field's name and value are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Field {
    /// The field name, as sent.
    pub name: Place,
    /// The value, without the spaces around it.
    pub value: Place,
}

impl Place {
    /// Where `part`, a slice of `head`, lies in it. A part from anywhere
    /// else (never the case) is an empty place.
    pub fn of(head: &[u8], part: &[u8]) -> Place {
        let start = (part.as_ptr() as usize).checked_sub(head.as_ptr() as usize);
        match start.and_then(|s| Some((u32::try_from(s).ok()?, u32::try_from(part.len()).ok()?))) {
            Some((start, len)) if start as usize + len as usize <= head.len() => {
                Place { start, len }
            }
            _ => Place::default(),
        }
    }

    /// Its byte range in the head.
    pub fn range(self) -> Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }

    /// The part itself, from the head taken off the buffer it was
    /// measured in.
    pub fn slice(self, head: &Bytes) -> Bytes {
        head.slice(self.range())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_finds_its_part_again_and_a_stranger_is_empty() {
        let head = Bytes::from_static(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        let place = Place::of(&head, &head[4..6]);
        assert_eq!(place.slice(&head), "/x");
        assert_eq!(Place::of(&head, b"elsewhere"), Place::default());
        assert_eq!(Place::of(&head[..4], &head[2..8]), Place::default());
    }
}
