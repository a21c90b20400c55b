//! ISO 3166-1 alpha-2 country code → continent code, for databases that
//! carry only a country (the flat `country_code` schema). Continents follow
//! the two-letter codes MaxMind uses: AF AN AS EU NA OC SA. Transcontinental
//! countries are placed as MaxMind's databases place them (Russia in Europe,
//! Turkey in Asia); `EU` and `AP`, which some databases give for addresses
//! known only by region, map to Europe and Asia.

/// The continent of a country, or `None` for an unknown code.
pub fn continent_of(country: [u8; 2]) -> Option<[u8; 2]> {
    let continent: &[u8; 2] = match &country {
        b"AC" | b"AO" | b"BF" | b"BI" | b"BJ" | b"BW" | b"CD" | b"CF" | b"CG" | b"CI" | b"CM"
        | b"CV" | b"DJ" | b"DZ" | b"EG" | b"EH" | b"ER" | b"ET" | b"GA" | b"GH" | b"GM" | b"GN"
        | b"GQ" | b"GW" | b"KE" | b"KM" | b"LR" | b"LS" | b"LY" | b"MA" | b"MG" | b"ML" | b"MR"
        | b"MU" | b"MW" | b"MZ" | b"NA" | b"NE" | b"NG" | b"RE" | b"RW" | b"SC" | b"SD" | b"SH"
        | b"SL" | b"SN" | b"SO" | b"SS" | b"ST" | b"SZ" | b"TA" | b"TD" | b"TG" | b"TN" | b"TZ"
        | b"UG" | b"YT" | b"ZA" | b"ZM" | b"ZW" => b"AF",
        b"AQ" | b"BV" | b"GS" | b"HM" | b"TF" => b"AN",
        b"AE" | b"AF" | b"AM" | b"AP" | b"AZ" | b"BD" | b"BH" | b"BN" | b"BT" | b"CC" | b"CN"
        | b"CX" | b"GE" | b"HK" | b"ID" | b"IL" | b"IN" | b"IO" | b"IQ" | b"IR" | b"JO" | b"JP"
        | b"KG" | b"KH" | b"KP" | b"KR" | b"KW" | b"KZ" | b"LA" | b"LB" | b"LK" | b"MM" | b"MN"
        | b"MO" | b"MV" | b"MY" | b"NP" | b"OM" | b"PH" | b"PK" | b"PS" | b"QA" | b"SA" | b"SG"
        | b"SY" | b"TH" | b"TJ" | b"TM" | b"TR" | b"TW" | b"UZ" | b"VN" | b"YE" => b"AS",
        b"AD" | b"AL" | b"AT" | b"AX" | b"BA" | b"BE" | b"BG" | b"BY" | b"CH" | b"CY" | b"CZ"
        | b"DE" | b"DK" | b"EE" | b"ES" | b"EU" | b"FI" | b"FO" | b"FR" | b"GB" | b"GG" | b"GI"
        | b"GR" | b"HR" | b"HU" | b"IE" | b"IM" | b"IS" | b"IT" | b"JE" | b"LI" | b"LT" | b"LU"
        | b"LV" | b"MC" | b"MD" | b"ME" | b"MK" | b"MT" | b"NL" | b"NO" | b"PL" | b"PT" | b"RO"
        | b"RS" | b"RU" | b"SE" | b"SI" | b"SJ" | b"SK" | b"SM" | b"UA" | b"VA" | b"XK" => b"EU",
        b"AG" | b"AI" | b"AW" | b"BB" | b"BL" | b"BM" | b"BQ" | b"BS" | b"BZ" | b"CA" | b"CR"
        | b"CU" | b"CW" | b"DM" | b"DO" | b"GD" | b"GL" | b"GP" | b"GT" | b"HN" | b"HT" | b"JM"
        | b"KN" | b"KY" | b"LC" | b"MF" | b"MQ" | b"MS" | b"MX" | b"NI" | b"PA" | b"PM" | b"PR"
        | b"SV" | b"SX" | b"TC" | b"TT" | b"US" | b"VC" | b"VG" | b"VI" => b"NA",
        b"AS" | b"AU" | b"CK" | b"FJ" | b"FM" | b"GU" | b"KI" | b"MH" | b"MP" | b"NC" | b"NF"
        | b"NR" | b"NU" | b"NZ" | b"PF" | b"PG" | b"PN" | b"PW" | b"SB" | b"TK" | b"TL" | b"TO"
        | b"TV" | b"UM" | b"VU" | b"WF" | b"WS" => b"OC",
        b"AR" | b"BO" | b"BR" | b"CL" | b"CO" | b"EC" | b"FK" | b"GF" | b"GY" | b"PE" | b"PY"
        | b"SR" | b"UY" | b"VE" => b"SA",
        _ => return None,
    };
    Some(*continent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_map_to_their_continents() {
        for (country, continent) in [
            (b"US", b"NA"),
            (b"BR", b"SA"),
            (b"DE", b"EU"),
            (b"RU", b"EU"),
            (b"TR", b"AS"),
            (b"JP", b"AS"),
            (b"AU", b"OC"),
            (b"NG", b"AF"),
            (b"AQ", b"AN"),
            (b"EU", b"EU"),
        ] {
            assert_eq!(continent_of(*country), Some(*continent), "{country:?}");
        }
        assert_eq!(continent_of(*b"ZZ"), None);
        assert_eq!(continent_of(*b"us"), None, "codes are upper case");
    }
}
