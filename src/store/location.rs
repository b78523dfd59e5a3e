//! How a [`Location`] is written in the state: `maildir:NAME`,
//! `mbox:OFFSET:LENGTH` or `mda`.

use crate::deliver::Location;

pub fn encode_location(location: &Location) -> String {
    match location {
        Location::Maildir { name } => format!("maildir:{name}"),
        Location::Mbox { offset, length } => format!("mbox:{offset}:{length}"),
        Location::Mda => "mda".into(),
    }
}

pub fn decode_location(text: &str) -> Option<Location> {
    if text == "mda" {
        return Some(Location::Mda);
    }
    if let Some(name) = text.strip_prefix("maildir:") {
        return (!name.is_empty() && !name.contains('/')).then(|| Location::Maildir {
            name: name.to_string(),
        });
    }
    let (offset, length) = text.strip_prefix("mbox:")?.split_once(':')?;
    Some(Location::Mbox {
        offset: offset.parse().ok()?,
        length: length.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for loc in [
            Location::Maildir {
                name: "1700000000.M1P2Q3.host".into(),
            },
            Location::Mbox {
                offset: 12,
                length: 3400,
            },
            Location::Mda,
        ] {
            assert_eq!(decode_location(&encode_location(&loc)), Some(loc));
        }
        assert_eq!(decode_location("maildir:../x"), None);
        assert_eq!(decode_location("mbox:1"), None);
        assert_eq!(decode_location("tape:1"), None);
    }
}
