//! Protobuf binary encoding for the messages whose Rust shape is an enum: a message
//! holding nothing but one `oneof` (envd's `ProcessEvent`, `ProcessSelector`, ...).
//! prost derives `Message` for structs only, so [`oneof_message!`] writes the impl:
//! each variant is one field of the message, encoded by one of the modules below.

/// Implements `prost::Message` for an enum whose variants are the members of a
/// message's single oneof: `oneof_message!(Ty { 1 => Variant(kind), ... })`, where
/// `kind` names a module of this file (`message`, `bytes`, `uint32`, `string`).
/// Decoding follows protobuf: a later occurrence of the oneof replaces an earlier one
/// of another member, and merges into one of the same (message) member.
macro_rules! oneof_message {
    ($ty:ident { $($tag:literal => $variant:ident($kind:ident)),+ $(,)? }) => {
        impl prost::Message for $ty {
            fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
                match self {
                    $($ty::$variant(value) => $crate::agent::wire::$kind::encode($tag, value, buf),)+
                }
            }

            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: prost::encoding::WireType,
                buf: &mut impl prost::bytes::Buf,
                ctx: prost::encoding::DecodeContext,
            ) -> Result<(), prost::DecodeError> {
                match tag {
                    $($tag => {
                        let mut value = match std::mem::take(self) {
                            $ty::$variant(value) => value,
                            _ => Default::default(),
                        };
                        let merged = $crate::agent::wire::$kind::merge(wire_type, &mut value, buf, ctx);
                        *self = $ty::$variant(value);
                        merged
                    })+
                    _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
                }
            }

            fn encoded_len(&self) -> usize {
                match self {
                    $($ty::$variant(value) => $crate::agent::wire::$kind::encoded_len($tag, value),)+
                }
            }

            fn clear(&mut self) {
                *self = Self::default();
            }
        }
    };
}
pub(crate) use oneof_message;

pub mod message {
    use prost::bytes::{Buf, BufMut};
    use prost::encoding::{DecodeContext, WireType};

    pub fn encode<M: prost::Message>(tag: u32, value: &M, buf: &mut impl BufMut) {
        prost::encoding::message::encode(tag, value, buf);
    }
    pub fn merge<M: prost::Message>(
        wire_type: WireType,
        value: &mut M,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::message::merge(wire_type, value, buf, ctx)
    }
    pub fn encoded_len<M: prost::Message>(tag: u32, value: &M) -> usize {
        prost::encoding::message::encoded_len(tag, value)
    }
}

/// `bytes` carried as [`Base64Bytes`](super::Base64Bytes) (of `Vec<u8>` or `Bytes`:
/// decoding into `Bytes` from a `Bytes` buffer slices it instead of copying).
pub mod bytes {
    use prost::bytes::{Buf, BufMut};
    use prost::encoding::{BytesAdapter, DecodeContext, WireType};

    use super::super::Base64Bytes;

    pub fn encode<B: BytesAdapter>(tag: u32, value: &Base64Bytes<B>, buf: &mut impl BufMut) {
        prost::encoding::bytes::encode(tag, &value.0, buf);
    }
    pub fn merge<B: BytesAdapter>(
        wire_type: WireType,
        value: &mut Base64Bytes<B>,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::bytes::merge(wire_type, &mut value.0, buf, ctx)
    }
    pub fn encoded_len<B: BytesAdapter>(tag: u32, value: &Base64Bytes<B>) -> usize {
        prost::encoding::bytes::encoded_len(tag, &value.0)
    }
}

pub mod uint32 {
    pub use prost::encoding::uint32::{encode, encoded_len, merge};
}

pub mod string {
    pub use prost::encoding::string::{encode, encoded_len, merge};
}
