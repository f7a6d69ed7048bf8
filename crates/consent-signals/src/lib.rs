//! Decoders for consent signals: IAB TCF v2.2 TC strings, IAB GPP strings, GPC.
